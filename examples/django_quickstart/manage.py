#!/usr/bin/env python
"""The quick start's command line: ``python manage.py migrate | runserver | tasklane_relay``."""

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "quickstart.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
