"""The transcription engine (worker only: it imports torch and whisper).

::

    audio file ─► pcm.PcmStream (ffmpeg, allow-listed input, PCM in pieces, time and length limits)
      ─► chunker.Chunker (silero VAD: chunks <= 30 s cut at silence; silence is skipped)
      ─► batcher.Batcher (one thread per worker: chunks of all running jobs, fair turns,
         same model and options per batch)
      ─► a runner, per WHISPER_ENGINE (models.Runner): openai_runner (PyTorch: encoder once per
         batch, decoder.LeanDecoder's greedy/sampling loop) or ct2_runner (CTranslate2, the same
         checkpoints converted by convert.py); the batcher applies temperature fallback to either
      ─► segments (tokens to timed segments, word timings) ─► pipeline.Engine (one job)

Nothing holds a whole recording: memory depends on batch size and model, not on audio length.
"""
