"""The web app (``iqa-adapter app``): a generate tab with quality sliders, and the paper's side-by-side subjective
study (building it from generated images, serving it to participants, analysing the votes).

Optional: ``pip install 'iqa-adapter[app]'`` (Starlette, uvicorn, SQLAlchemy). The core package never imports
this package, so it keeps working without them.
"""
