"""The trainwire service: HTTP routes, schemas, settings, the job store and the event hub."""
