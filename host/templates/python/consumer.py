"""componentize-py finds the class of an exported resource in a module named after its
interface: `Destination` of `narrows:exporter/consumer` here. It lives in app.py."""

from app import Destination  # noqa: F401
