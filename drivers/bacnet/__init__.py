"""`driver: bacnet`: BACnet/IP devices (air handlers, chillers, boilers) over one shared port."""

from .driver import BacnetDriver
from .options import BacnetOptions, ForeignDevice, Network, ObjectSpec

__all__ = ["BacnetDriver", "BacnetOptions", "ForeignDevice", "Network", "ObjectSpec"]
