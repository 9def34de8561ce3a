.PHONY: test up lint bench

test:  ## install, start PostgreSQL/Redis if stopped, run the whole suite (WeChat tests in .venv-wechat)
	./scripts/test.sh

lint:
	ruff check .

bench:
	python3 benchmarks/grounding_draw.py
	python3 benchmarks/queue_overhead.py
	python3 benchmarks/discord_feedback.py
