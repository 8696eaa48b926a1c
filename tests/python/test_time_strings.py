"""Composer's time strings (issue #12): the torch EMA accepts what Composer's
Time.from_timestring accepts ("1e1ba", "10.0ba", "10BA", "2Ep", ".5dur",
"5e-1dur"), refuses what it refuses with its message, and starts an
ema_start in samples, tokens or seconds on the first update event whose
reported count reaches it (docs/protocol.md "Time" and "Configuration")."""

import emadtest
from emadtest import make_model

import emaclient
from emaclient.torch import EMA


class TimeStrings(emadtest.EmadTestCase):

    def ema(self, d, **config):
        return EMA(make_model(0), socket=d.sock, session="times", **config)

    def test_the_issues_strings_are_accepted_and_kept_canonical(self):
        d = self.daemon()
        cases = [
            (dict(half_life="1e1ba"), ("10ba", "1ba", "0.0dur")),
            (dict(half_life="10.0ba"), ("10ba", "1ba", "0.0dur")),
            (dict(half_life="10BA"), ("10ba", "1ba", "0.0dur")),
            (dict(half_life="2Ep"), ("2ep", "1ep", "0.0dur")),
            (dict(half_life="2EP", update_interval="1.0EP"), ("2ep", "1ep", "0.0dur")),
            (dict(half_life="10ba", update_interval="1.0ba"), ("10ba", "1ba", "0.0dur")),
            (dict(ema_start=".5dur"), ("1000ba", "1ba", "0.5dur")),
            (dict(ema_start="5e-1dur"), ("1000ba", "1ba", "0.5dur")),
            (dict(ema_start="3e4tok"), ("1000ba", "1ba", "30000tok")),
            (dict(ema_start="1h30m"), ("1000ba", "1ba", "5400sec")),
        ]
        for config, (half_life, interval, start) in cases:
            with self.subTest(config=config):
                with self.ema(d, **config) as ema:
                    st = ema.session.state
                    self.assertEqual((st["half_life"], st["update_interval"], st["ema_start"]),
                                     (half_life, interval, start))

    def test_an_interval_in_composers_grammar_sets_the_update_event(self):
        d = self.daemon()
        with self.ema(d, half_life="4ba", update_interval="2.0BA") as ema:
            self.assertEqual(ema.batch_end(1, wait=True).action, "start")
            self.assertEqual(ema.batch_end(2, wait=True).action, "update")
            self.assertEqual(ema.batch_end(3, wait=True).action, "none")

    def test_what_composer_refuses_is_refused_with_its_message(self):
        d = self.daemon()
        cases = [
            (dict(half_life="1.5ba"), "value 1.5 is not an integer. Units TimeUnit.BATCH "
                                      "require integer values."),
            (dict(ema_start="0.5sp"), "value 0.5 is not an integer. Units TimeUnit.SAMPLE "
                                      "require integer values."),
            (dict(smoothing=0.5, update_interval="1sp"),
             "Invalid time unit for parameter update_interval: TimeUnit.SAMPLE"),
            (dict(smoothing=0.5, update_interval="0.5dur"),
             "Invalid time unit for parameter update_interval: TimeUnit.DURATION"),
            (dict(half_life="10ba", update_interval="1ep"), "does not match half_life's unit"),
            (dict(ema_start="10ms"), "Invalid time string"),
        ]
        for config, message in cases:
            with self.subTest(config=config):
                with self.assertRaises(emaclient.Error) as cm:
                    self.ema(d, **config)
                self.assertEqual(cm.exception.code, "BADARG")
                self.assertIn(message, str(cm.exception))

    def test_a_samples_start_starts_when_the_reported_count_reaches_it(self):
        d = self.daemon()
        with self.ema(d, half_life="10ba", ema_start="1e2SP") as ema:
            self.assertEqual(ema.batch_end(wait=True, samples=64).action, "none")
            self.assertEqual(ema.batch_end(wait=True, samples=128).action, "start+update")
            self.assertEqual(ema.batch_end(wait=True, samples=192).action, "update")

    def test_a_tokens_start_starts_when_the_reported_count_reaches_it(self):
        d = self.daemon()
        with self.ema(d, half_life="2ep", ema_start="3e4tok") as ema:
            self.assertEqual(ema.epoch_end(wait=True, tokens=29999).action, "none")
            self.assertEqual(ema.epoch_end(wait=True, tokens=30000).action, "start+update")

    def test_a_count_start_without_the_count_is_an_error_naming_it(self):
        d = self.daemon()
        with self.ema(d, half_life="10ba", ema_start="100sp") as ema:
            with self.assertRaises(emaclient.Error) as cm:
                ema.batch_end(wait=True)
            self.assertEqual(cm.exception.code, "BADARG")
            self.assertIn("time.samples: missing", str(cm.exception))
            self.assertIn('"100sp"', str(cm.exception))

    def test_a_seconds_start_uses_the_reported_training_time(self):
        d = self.daemon()
        with self.ema(d, half_life="10ba", ema_start="1h") as ema:
            ema.fit_start()
            # measured from fit_start: far below an hour
            self.assertEqual(ema.batch_end(wait=True).action, "none")
            # a resumed trainer reports its training time so far
            self.assertEqual(ema.batch_end(wait=True, seconds=3600).action, "start+update")

    def test_the_client_sends_the_counts_through_the_c_library(self):
        d = self.daemon()
        with self.ema(d, half_life="10ba", ema_start="5tok") as ema:
            s = ema.session
            ema.wait()
            self.assertEqual(s.event("batch_end", 1, 0, tokens=4).action, "none")
            self.assertEqual(s.event("batch_end", 2, 0, samples=9, tokens=5,
                                     seconds=1).action, "start+update")


if __name__ == "__main__":
    import unittest
    unittest.main()
