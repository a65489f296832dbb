"""The storage effects every store performs, and the method that performs each.

Each store names its handlers alike (``_get_client`` performs ``GetClient``, ...), so one table
serves them all and a new storage effect is added here once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from kavach_core import effects as fx

__all__ = ["HANDLER_NAMES", "bind_handlers"]

HANDLER_NAMES: Mapping[type[fx.Effect], str] = {
    fx.GetClient: "_get_client",
    fx.PutClient: "_put_client",
    fx.DeleteClient: "_delete_client",
    fx.ListClients: "_list_clients",
    fx.PutPending: "_put_pending",
    fx.GetPending: "_get_pending",
    fx.TakePending: "_take_pending",
    fx.PutCode: "_put_code",
    fx.GetCode: "_get_code",
    fx.ConsumeCode: "_consume_code",
    fx.GetGrant: "_get_grant",
    fx.RevokeGrant: "_revoke_grant",
    fx.ListGrants: "_list_grants",
    fx.RotateRefresh: "_rotate",
    fx.RevokeAccessToken: "_revoke_access",
    fx.IsTokenRevoked: "_is_revoked",
    fx.GetSigningKeys: "_get_keys",
    fx.SwapSigningKeys: "_swap_keys",
    fx.Hit: "_hit",
}
"""Effect type -> name of the store method performing it (``FetchDocument`` is not storage)."""


def bind_handlers(store: object) -> dict[type[fx.Effect], Callable[..., Any]]:
    """``store``'s bound handler for every effect of :data:`HANDLER_NAMES`."""
    return {effect: getattr(store, name) for effect, name in HANDLER_NAMES.items()}
