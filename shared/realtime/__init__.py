"""Live transcription: OpenAI's Realtime transcription sessions over WebSocket, in the worker
(``server`` the handshake, ``session`` one connection, ``turns`` the audio buffer and server
VAD, ``audio`` the input formats, ``protocol`` the events)."""
