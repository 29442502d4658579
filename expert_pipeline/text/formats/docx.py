"""Word (.docx): paragraphs and tables in document order; legacy .doc and non-zip files refused."""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Final

from expert_pipeline.text.pages import ExtractionError, PageText
from expert_pipeline.text.sections import limit_pages, sections

if TYPE_CHECKING:
    from docx.document import Document as DocxDocument
    from docx.table import Table

_ZIP_MAGIC: Final = b"PK\x03\x04"
_OLE_MAGIC: Final = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # legacy .doc (and other Office 97 files)


def docx_pages(path: Path, max_pages: int) -> Iterator[PageText]:
    return limit_pages(sections(_docx_blocks(path), "\n\n"), max_pages)


def _docx_blocks(path: Path) -> Iterator[str]:
    document = _open_docx(path)
    from docx.table import Table

    for block in document.iter_inner_content():
        if isinstance(block, Table):
            yield _table_text(block)
        else:
            yield block.text


def _open_docx(path: Path) -> DocxDocument:
    with path.open("rb") as handle:
        head = handle.read(8)
    if head.startswith(_OLE_MAGIC):
        raise ExtractionError(
            "unsupported_type", "old Word .doc format renamed to .docx; save it as .docx and upload again"
        )
    if not head.startswith(_ZIP_MAGIC):
        raise ExtractionError("corrupt", "not a valid Word (.docx) file")
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        return docx.Document(str(path))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError) as exc:
        raise ExtractionError("corrupt", "damaged Word (.docx) file: cannot be opened") from exc
    except MemoryError:
        # The extraction worker reports this with its memory limit; it must not read as damage.
        raise
    except Exception as exc:  # lxml and zip errors vary; all mean "damaged"
        if _out_of_memory(exc):
            raise MemoryError("libxml2 could not allocate memory") from exc
        raise ExtractionError("corrupt", f"damaged Word (.docx) file: {exc.__class__.__name__}") from exc


def _out_of_memory(exc: Exception) -> bool:
    # libxml2 reports a refused allocation as a parse error (ERR_NO_MEMORY), not as MemoryError.
    from lxml import etree

    return isinstance(exc, etree.ParseError) and exc.code == etree.ErrorTypes.ERR_NO_MEMORY


def _table_text(table: Table) -> str:
    rows: list[str] = []
    for row in table.rows:
        cells: list[str] = []
        for cell in row.cells:
            text = cell.text.strip()
            # A merged cell is returned once per grid column it spans.
            if text and (not cells or cells[-1] != text):
                cells.append(text)
        if cells:
            rows.append(" | ".join(cells))
    return "\n".join(rows)
