"""Failures agreed on by every rank: a stage that failed anywhere raises StageFailed everywhere."""
from __future__ import annotations

import traceback


class StageFailed(Exception):
    """Some rank failed a stage; every rank raises it with the same message."""


def err_text(e: BaseException) -> str:
    tb = traceback.format_exception(type(e), e, e.__traceback__)
    return f"{type(e).__name__}: {e}\n" + "".join(tb[-4:])


def raise_if(err: str | None) -> None:
    if err:
        raise RuntimeError(err)
