"""The terminal dashboard (Textual). `app.make_app(source, control)` builds it; `sources`,
`filters`, `queries`, `control` and `ring` are headless and never import Textual."""
