"""Tables (csv, Markdown, LaTeX) and figures (png, pdf) from the metrics table.

Reports never import a model class: they read metrics and detector descriptions.
"""
