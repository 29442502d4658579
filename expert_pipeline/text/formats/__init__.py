"""One module per file format; each turns a stored file into pages of text or an ExtractionError.

Parsers are imported inside the functions that use them, so importing a format module (the API
does, through SUPPORTED_EXTENSIONS) stays cheap and the extraction worker loads only what it needs.
"""
