"""Treatment and self-treatment plans (DBEP, issue 11): FHIR ``CarePlan`` and ``Goal``.

Web-free: the value set of plan activities (:mod:`.activities`), validation (:mod:`.validation`), and the
check of measurements against a plan's thresholds (:mod:`.thresholds`). Storage is
``sharing_api.store.careplans``; the routes are ``sharing_api.routes.careplans``.
"""
