"""Model runtimes, pure torch, one subpackage per modality: audio, vision, speech, llm.

Each subpackage re-exports its public names lazily, and keeps its config in a torch-free `config`
module. Shared: `errors` (MediaError), `paths` (the weights cache), `devices` (device strings),
`feature_cache`. Nothing in this package imports ray or fastapi; Serve wraps these classes in `serve/`.
"""
