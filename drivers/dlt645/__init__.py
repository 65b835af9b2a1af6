"""`driver: dlt645`: DL/T 645-2007 electricity meters on RS-485, local or via TCP."""

from drivers.dlt645.driver import Dlt645Driver
from drivers.dlt645.options import Dlt645Options

__all__ = ["Dlt645Driver", "Dlt645Options"]
