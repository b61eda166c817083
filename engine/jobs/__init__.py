"""Scheduled jobs (APScheduler): eligibility checks, redelivery, retention."""
