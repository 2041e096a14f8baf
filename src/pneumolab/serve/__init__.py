"""The web service: a page for clinicians and a JSON API (imports inference/, never training/)."""
