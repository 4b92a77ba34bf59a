"""The work behind each endpoint, free of HTTP: chat, transcription, media, remote fetching.

Services take validated protocol models and injected deployment handles, and raise
`serve.errors.ServiceError`s; `serve/http/` maps those to statuses.
"""
