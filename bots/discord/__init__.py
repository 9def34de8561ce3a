"""The Discord frontend: a thin discord.py adapter over the core."""
