"""``wsicl serve`` and its client: the inference service (``service``: uploads, jobs,
models; no HTTP), its HTTP app (``app``: FastAPI, tokens, hardening), the client
(``client``: a predictor that runs on a server) and the wire format both ends share
(``wire``). Slicer ships the client and the wire format only; the service and the app need
FastAPI and come with ``pip install ".[server]"``."""
