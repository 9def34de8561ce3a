"""The WeChat frontend: a thin python-wechaty adapter over the core (extra: ``qvl[wechat]``)."""
