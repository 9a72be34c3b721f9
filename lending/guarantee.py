"""Guarantee compensation (代偿) triggers: the end-of-day hook (DOMAIN.md §5, §7).

In assisted lending (助贷) a scene partner may guarantee its loans and compensate the
outstanding debt when a loan reaches a configured DPD. End of day asks the shard's
`GuaranteePolicy` about every loan it closes; a trigger is counted in the run report and
returned to the caller. The partner-models work fills this in (per-partner guarantee terms,
the compensation postings into the guarantee receivable, settlement); until then every loan
is self-operated and `NO_GUARANTEE` never triggers.
"""

from __future__ import annotations

from datetime import date
from typing import Protocol

import msgspec

from lending.loans import Loan


class GuaranteeTrigger(msgspec.Struct, frozen=True):
    loan_id: str
    guarantor: str
    dpd: int
    outstanding: int  # what the guarantor owes: the loan's unpaid total


class GuaranteePolicy(Protocol):
    def trigger(self, before: Loan, after: Loan, day: date) -> GuaranteeTrigger | None:
        """The compensation `after` (the loan closed for `day`) calls for, if any."""
        ...


class NoGuarantee:
    """Self-operated lending: no guarantor, nothing ever triggers."""

    def trigger(self, before: Loan, after: Loan, day: date) -> GuaranteeTrigger | None:
        return None


NO_GUARANTEE = NoGuarantee()


class GuaranteeAtDpd(msgspec.Struct, frozen=True):
    """A guarantor compensating every loan the day it reaches `trigger_dpd` (the shape of a
    助贷 guarantee; the partner-models work will pick the terms per partner and product)."""

    guarantor: str
    trigger_dpd: int

    def trigger(self, before: Loan, after: Loan, day: date) -> GuaranteeTrigger | None:
        if before.dpd < self.trigger_dpd <= after.dpd:
            return GuaranteeTrigger(after.loan_id, self.guarantor, after.dpd,
                                    after.unpaid_total())
        return None
