-- The saga's `next_step` joins the quiet columns of its audit trail. It is the runner's
-- bookmark, and the steps' own rows already record each step's start and end in the
-- trail (a step's RUNNING record is the saga moving to it); recording the saga's row
-- again at every step doubled the trail of a payment for nothing. A change of the
-- saga's state or failure is still recorded, with `next_step` in its images.
SELECT audit_trail_attach('sagas', 'saga_id',
                          quiet => '{lease_owner,lease_expires_at,attempts,next_attempt_at,updated_at,next_step}',
                          omit => '{input}');
