"""The transcription stage: new audio in a vertical's inbox, transcribed with its adapter."""
