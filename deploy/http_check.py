"""Healthcheck of the project image's services (the image has no curl): exit 0 when ``GET URL`` answers 2xx in 5 s.

python /opt/darkroom/app/deploy/http_check.py http://localhost:5000/health
"""

import sys
import urllib.request

try:
    with urllib.request.urlopen(sys.argv[1], timeout=5) as response:
        sys.exit(0 if 200 <= response.status < 300 else 1)
except Exception as e:  # noqa: BLE001 - any failure is "unhealthy"
    sys.exit(f"{sys.argv[1]}: {e}")
