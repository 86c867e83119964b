"""What each endpoint does, one module per group: `chat` (/v1/chat/completions, with sessions and knowledge
bases), `completions` (/v1/completions), `sessions` (/v1/sessions), `kb` (/v1/kb), `models` (/v1/models), `runs`
(/v1/runs, run folders for the web UI) and `ui` (the UI's files and /v1/server).

A handler takes the server's state (`runtime.Api`), the HTTP request (only so its generations can be aborted when
the client leaves), the caller's owner id and the parsed body, and returns the payload. Routes, keys and error
handlers live in `serve/app.py`."""
