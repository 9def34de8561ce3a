"""The web frontend: a page in the browser and an OpenAI-compatible API, on the same core.

``app.create_app`` builds the FastAPI application, ``app.run`` serves it with uvicorn
(``qvl web``, and ``qvl up`` by default). Every turn goes through :class:`bots.core.Core`
like a Discord or WeChat message: the same SQL, queue, workers, limits and delivery.
"""
