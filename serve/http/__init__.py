"""The HTTP edge: the FastAPI app and its routes (`ingress`), error mapping, SSE, body limits.

Routes are thin: they admit, parse, call a service and map its errors to statuses.
"""
