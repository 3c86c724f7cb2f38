"""Re-export of the signalling/media seam, which lives in `rtp/call.py`.

Media may not import signalling (`rtp` never imports `b2bua`), so the plain objects both
sides share live on the media side; this module keeps `from b2bua.call import ...` working.
"""

from rtp.call import Call, Direction, MediaEndpoint, Party, Role

__all__ = ["Call", "Direction", "MediaEndpoint", "Party", "Role"]
