"""The WeCom frontend: WeCom's AI bot over its long connection, a thin adapter over the core (extra: ``qvl[wecom]``)."""
