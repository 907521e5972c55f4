-- Refresh sessions moved to Cassandra (infra/cassandra/schema/0002_user_sessions.cql,
-- services/users/adapters/sessions.py): their tables here go. Nothing else references
-- them: no foreign key or view (DROP without CASCADE refuses if one appears), and the
-- audit log names sessions by id in text columns only, which stay meaningful.
-- Sessions open at deployment end with these tables: their holders log in again (access
-- tokens already issued keep working until they expire).
DROP TABLE refresh_tokens;
DROP TABLE refresh_sessions;
