"""kavachOS conformance kit: black-box checks of an OAuth 2.1 / MCP authorization server over HTTP.

Point it at any authorization server (and, optionally, the MCP server it protects)::

    kavach conformance --issuer https://as.example --resource https://mcp.example/mcp --register \\
        --username alice --password secret --json report.json

Every check names the rule id of the kavachOS spec checklist it observes (``MD-01`` ...
``RS-04``). The kit sends traffic only to the URLs it is given (their origins), follows no
redirect off the authorization server, and never needs a browser: the person's step (sign-in
and consent) is a generic HTML form filler or a callable of yours.
"""

from __future__ import annotations

from .report import Check, Report, RuleResult
from .runner import KitOptions, run_kit

__all__ = ["Check", "KitOptions", "Report", "RuleResult", "run_kit"]
