"""Model runtimes, pure torch: audio (Whisper), vision (CLIP), llm (decoder), weights (preparation).

Nothing in this package imports ray or fastapi; Serve wraps these classes in `serve/`.
"""
