"""The politeness checks of :mod:`crawlproj_testing.politeness_checks`, under the name the tests import."""

from crawlproj_testing.politeness_checks import *  # noqa: F403
from crawlproj_testing.politeness_checks import __all__  # noqa: F401
