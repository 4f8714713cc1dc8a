"""`gpt2tui serve`: an OpenAI-compatible HTTP server over one model, with continuous batching.

    scheduler.py      the one thread that owns the model and batches every request's rows (continuous batching)
    sampler.py        per-row sampling: parameters, seeds, penalties, log-probabilities
    engine.py         the model, its tokenizer and chat template, and the scheduler: what the routes talk to
    schemas.py        pydantic models of every request and response, in OpenAI's shapes
    openai_routes.py  /v1/models, /v1/completions, /v1/chat/completions
    ops_routes.py     /health and /metrics
    page_routes.py    the chat page at / and its files (static/: index.html, app.css, app.js, api.js, markdown.js)
    history_routes.py /api/conversations: the page's conversations, in the chat app's SQLite history
    history_schemas.py  their pydantic requests and responses
    app.py            `create_app(engine, settings)`: the FastAPI app, its middleware and error handlers
    server.py         running it under uvicorn (`gpt2tui serve`)

FastAPI and uvicorn are the `serve` extra (`pip install 'gpt2tui[serve]'`): only this package imports them.
"""
