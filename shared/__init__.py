"""What crosses process boundaries: message schemas, scan metadata, the frame ring.

Depends on nothing else in holostream.
"""
