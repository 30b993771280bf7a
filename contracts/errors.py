"""The contract error tree. Every rejection carries a stable reason code."""

from __future__ import annotations

from enum import StrEnum


class Reason(StrEnum):
    """Stable reason codes recorded on the rejected stream and counted in ``kasmina status``."""

    BAD_FRAME = "bad_frame"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNKNOWN_KEY = "unknown_key"
    EXPIRED_KEY = "expired_key"
    REVOKED_KEY = "revoked_key"
    FORBIDDEN_KIND = "forbidden_kind"
    BAD_SIGNATURE = "bad_signature"
    STALE = "stale"
    FROM_FUTURE = "from_future"
    REPLAYED = "replayed"
    WRONG_RUN = "wrong_run"
    WRONG_DESTINATION = "wrong_destination"
    TOO_LARGE = "too_large"
    UNKNOWN_KIND = "unknown_kind"
    BAD_BODY = "bad_body"
    OVERLOADED = "overloaded"
    # raised by actors after a message verified and parsed
    UNEXPECTED_KIND = "unexpected_kind"
    UNKNOWN_SLOT = "unknown_slot"
    ILLEGAL_TRANSITION = "illegal_transition"
    NON_FINITE = "non_finite"
    # raised by the BarrierActor's core
    UNKNOWN_RANK = "unknown_rank"
    NOT_A_BARRIER_STEP = "not_a_barrier_step"
    BARRIER_TIMED_OUT = "barrier_timed_out"
    INVALID = "invalid"


class ContractError(Exception):
    """A message broke the contract; ``code`` says how.

    ``message_id``, ``kind`` and ``sender`` are what the frame said about itself ("" when it could
    not be read that far); ``verified`` is True only when its MAC checked out, so that they are
    authentic rather than merely claimed.
    """

    code: Reason = Reason.BAD_FRAME

    def __init__(self, detail: str = "") -> None:
        super().__init__(f"{self.code.value}: {detail}" if detail else self.code.value)
        self.detail = detail
        self.message_id = ""
        self.kind = ""
        self.sender = ""
        self.verified = False

    def claim(self, message_id: str, kind: str, sender: str, *, verified: bool) -> ContractError:
        """Attach what the rejected frame said about itself; returns ``self``."""
        self.message_id, self.kind, self.sender, self.verified = message_id, kind, sender, verified
        return self


class BadFrame(ContractError):
    """The bytes are not a well-formed envelope."""

    code = Reason.BAD_FRAME


class UnsupportedVersion(ContractError):
    """The frame is of an envelope version this receiver does not accept (v1 included)."""

    code = Reason.UNSUPPORTED_VERSION


class WrongRun(ContractError):
    """A genuine frame signed for another run than the one whose stream holds it."""

    code = Reason.WRONG_RUN


class WrongDestination(ContractError):
    """A genuine frame signed for another stream (inbox) of the run than the one holding it."""

    code = Reason.WRONG_DESTINATION


class UnknownKey(ContractError):
    """The key id is not in the key ring."""

    code = Reason.UNKNOWN_KEY


class ExpiredKey(ContractError):
    """The key id was retired and its grace period is over."""

    code = Reason.EXPIRED_KEY


class RevokedKey(ContractError):
    """The key id was revoked: it verifies nothing, whatever the message's timestamp."""

    code = Reason.REVOKED_KEY


class ForbiddenKind(ContractError):
    """The signing key's roles do not allow this kind (or the sender name is not well-formed)."""

    code = Reason.FORBIDDEN_KIND


class BadSignature(ContractError):
    """The MAC does not match the header and body."""

    code = Reason.BAD_SIGNATURE


class Stale(ContractError):
    """The timestamp is older than the freshness window."""

    code = Reason.STALE
    ts_ns = 0  # the frame's stamp, once its signature verified


class FromFuture(ContractError):
    """The timestamp is further ahead than the clock tolerance."""

    code = Reason.FROM_FUTURE


class Replayed(ContractError):
    """The message id was already seen inside the nonce window."""

    code = Reason.REPLAYED


class TooLarge(ContractError):
    """The frame exceeds the size limit."""

    code = Reason.TOO_LARGE


class UnknownKind(ContractError):
    """No protobuf type is registered for the kind."""

    code = Reason.UNKNOWN_KIND


class BadBody(ContractError):
    """The body does not parse as the kind's protobuf type."""

    code = Reason.BAD_BODY


class Overloaded(ContractError):
    """The nonce store is full of unexpired entries: fail closed."""

    code = Reason.OVERLOADED


class Refused(ContractError):
    """A verified message that an actor refuses (code given at construction)."""

    def __init__(self, code: Reason, detail: str = "") -> None:
        self.code = code
        super().__init__(detail)
