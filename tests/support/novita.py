"""Constants of the Novita contract tests: the simulator's API key and its lifecycle timings."""

from __future__ import annotations

API_KEY = "sk_test_contract_4f1c9e"
# Long enough that a manual-clock test sees every phase, one `clock.advance(PHASE_SECONDS)` per phase.
PHASE_SECONDS = 10.0
REMOVED_GRACE_SECONDS = 60.0
