"""The example budget of one property: the ``relaybox-fuzz`` profile scaled by a weight."""

from __future__ import annotations

from hypothesis import settings


def budget(weight: float = 1.0) -> settings:
    """Settings for a property worth ``weight`` times the profile's example count (a
    cheap property runs more examples than one that opens several connections each)."""
    profile = settings.get_profile("relaybox-fuzz")
    return settings(profile, max_examples=max(1, round(profile.max_examples * weight)))
