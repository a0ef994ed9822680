"""Development and test tooling, outside the runtime package: the local stack (``whisper-api
dev``), generated demo checkpoints and test audio. Production images never need it."""
