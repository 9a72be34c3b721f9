"""The settlement files on the operator API (docs/operations.md "Settlement files"):

* `GET /ops/settlements?business_date=&book=&limit=`: the files of one closed date (or the
  latest files, newest date first), of one book or all: book, date, loans, the totals
  record's figures, sha256, size;
* `GET /ops/settlements/{book}/{business_date}`: one file's exact stored bytes as
  `text/csv`, its digest in `X-Checksum-SHA256` (the value of its checksum record).

Reads only: end of day writes the files (cluster/settlement.py). Roles are checked before
this runs (gateway/ops_access.py).
"""

from __future__ import annotations

from datetime import date
from typing import Any

import asyncpg

from gateway.http import JSON, HttpError, Scope
from gateway.validation import ascii_int, path_param, query_params
from lending.settlement import file_name
from storage import settlement_store
from storage.gl_summary import parse_business_date

PREFIX = "/ops/settlements"
LIST_DEFAULT = 100
LIST_MAX = 1000
CSV_CONTENT_TYPE = b"text/csv; charset=utf-8"
CHECKSUM_HEADER = b"x-checksum-sha256"


class Download(bytes):
    """A body that is not JSON: its content type and extra headers travel with it."""

    content_type: bytes
    headers: list[tuple[bytes, bytes]]

    def __new__(
        cls, content: bytes, content_type: bytes, headers: list[tuple[bytes, bytes]]
    ) -> Download:
        body = super().__new__(cls, content)
        body.content_type = content_type
        body.headers = headers
        return body


class SettlementDesk:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool

    @staticmethod
    def owns(path: str) -> bool:
        return path == PREFIX or path.startswith(PREFIX + "/")

    async def handle(self, scope: Scope) -> tuple[str, bytes]:
        """A GET whose route and roles gateway/ops_access.py has already checked."""
        path = scope["path"]
        if path == PREFIX:
            return "settlements", JSON.encode(await self._list(query_params(scope)))
        book, _, day = path[len(PREFIX) + 1:].partition("/")
        return "settlement_file", await self._file(path_param(book, "book"),
                                                   path_param(day, "business_date"))

    async def _list(self, query: dict[str, list[str]]) -> dict[str, Any]:
        text = query.get("business_date", [""])[0]
        day = None
        if text:
            day = _business_date(text)
        book = query.get("book", [""])[0] or None
        limit_text = query.get("limit", [None])[0]
        limit = LIST_DEFAULT
        if limit_text is not None:
            parsed = ascii_int(limit_text, LIST_MAX)
            if parsed is None or parsed < 1:
                raise HttpError(400, "invalid_request",
                                f"limit must be an integer in 1..{LIST_MAX}", "limit")
            limit = parsed
        if book is not None:
            await self._known_book(book)
        if day is not None:
            await self._settled(day)
        files = await settlement_store.list_files(self.pool, day, book, limit)
        for summary in files:
            summary["download"] = f"{PREFIX}/{summary['book']}/{summary['business_date']}"
        return {"business_date": day.isoformat() if day else None, "book": book,
                "files": files}

    async def _file(self, book: str, text: str) -> Download:
        day = _business_date(text)
        await self._known_book(book)
        stored = await settlement_store.file_content(self.pool, day, book)
        if stored is None:
            await self._settled(day)
            raise HttpError(404, "not_found",
                            f"{book} has no settlement file of {day}: its first one is of "
                            "the first date it was posted to", "business_date")
        content, digest = stored
        disposition = f'attachment; filename="{file_name(book, day)}"'
        return Download(content, CSV_CONTENT_TYPE, [
            (CHECKSUM_HEADER, digest.encode("ascii")),
            (b"content-disposition", disposition.encode("utf-8")),
        ])

    async def _known_book(self, book: str) -> None:
        books = await settlement_store.settlement_books(self.pool)
        if book not in books:
            known = ", ".join(books) or "none yet"
            raise HttpError(404, "not_found",
                            f"no settlement files of book {book!r}; books with files: "
                            f"{known}", "book")

    async def _settled(self, day: date) -> None:
        if not await settlement_store.is_settled(self.pool, day):
            raise HttpError(404, "not_found",
                            f"no settlement files of {day}: end of day builds them once the "
                            "date is closed", "business_date")


def _business_date(text: str) -> date:
    day = parse_business_date(text)
    if day is None:
        raise HttpError(400, "invalid_request", "business_date must be a YYYY-MM-DD date",
                        "business_date")
    return day
