"""The transcription engine (worker only: it imports torch and whisper).

::

    audio file ─► pcm.PcmStream (ffmpeg, allow-listed input, PCM in pieces, time and length limits)
      ─► chunker.Chunker (silero VAD: chunks <= 30 s cut at silence; silence is skipped)
      ─► batcher.Batcher (one thread per worker: chunks of all running jobs, fair turns,
         same model and options per batch)
      ─► decoder.decode_batch (encoder once per batch, lean greedy/sampling loop, fallback)
      ─► segments (tokens to timed segments, word timings) ─► pipeline.transcribe_file (one job)

Nothing holds a whole recording: memory depends on batch size and model, not on audio length.
"""
