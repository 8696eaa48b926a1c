"""EMA profiles from Python (docs/protocol.md "Profiles"): emaclient.torch.EMA(model,
profiles={...}, eval_profile=...) with a Composer, a timm warm-up and an EDM2 power profile,
each checked bit for bit against a torch implementation of the same formulas (decays in double,
shadow.lerp_(param.float(), float(1 - decay))); swap("ema", profile=), eval(profile=), and a
state_dict carrying every profile that load_state_dict brings back exactly."""

import unittest

import torch

import emadtest
from emadtest import bits

import emaclient
from emaclient.torch import EMA

PROFILES = {
    "fast": {"smoothing": 0.75, "update_interval": "2ba", "ema_start": "3ba"},
    "warm": {"decay": 0.999, "min_decay": 0.1, "update_after_step": 2, "inv_gamma": 1.0,
             "power": 0.75},
    "p": {"schedule": "power", "gamma": 6.94, "update_interval": "3ba"},
}


class Reference:
    """The three profiles in torch, on fp32 shadows of every parameter."""

    def __init__(self, model):
        self.shadow = {n: {k: p.detach().float().clone() for k, p in model.named_parameters()}
                       for n in PROFILES}
        self.started_fast = False
        self.last_power = 0

    def _copy(self, name, model):
        for k, p in model.named_parameters():
            self.shadow[name][k].copy_(p.detach().float())

    def _lerp(self, name, model, decay):
        for k, p in model.named_parameters():
            self.shadow[name][k].lerp_(p.detach().float(), float(1.0 - decay))

    def batch_end(self, model, b):
        if not self.started_fast and b >= 3:
            self._copy("fast", model)
            self.started_fast = True
        if self.started_fast and b % 2 == 0:
            self._lerp("fast", model, 0.75)
        k = b - 2 - 1
        decay = 0.0 if k <= 0 else max(min(1.0 - (1.0 + k / 1.0) ** -0.75, 0.999), 0.1)
        self._lerp("warm", model, decay)
        if b % 3 == 0:
            beta = (1.0 - (b - self.last_power) / b) ** (6.94 + 1.0)
            self._lerp("p", model, beta)
            self.last_power = b


def make_model():
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Linear(7, 5), torch.nn.Linear(5, 3))
    model[1].to(torch.bfloat16)
    return model


def step(model, b):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.sin(torch.arange(p.numel(), dtype=torch.float32) * 0.3 + b)
                   .reshape(p.shape).to(p.dtype))


class Profiles(emadtest.EmadTestCase):

    def check(self, ema, ref):
        for name in PROFILES:
            got = ema.shadow_state_dict(profile=name)
            for k, want in ref.shadow[name].items():
                self.assertTrue(torch.equal(bits(got[k]), bits(want)),
                                "profile %s, %s differs" % (name, k))

    def test_three_profiles_bit_exact_swap_eval_and_state_dict(self):
        self.three_profiles("shm")

    def test_three_profiles_in_mirror_mode(self):
        """Mirror mode copies the params out at every update event: each profile has its
        own interval, and any may read them."""
        self.three_profiles("mirror")

    def three_profiles(self, mode):
        d = self.daemon()
        model = make_model()
        with EMA(model, socket=d.sock, session="prof", profiles=PROFILES,
                 eval_profile="warm", mode=mode) as ema:
            self.assertEqual(ema.mode, mode)
            self.assertEqual(ema.profiles, ["fast", "warm", "p"])
            ref = Reference(model)
            for b in range(1, 8):
                step(model, b)
                ema.batch_end(batch=b, wait=True)
                ref.batch_end(model, b)
            self.check(ema, ref)
            st = ema.state()
            self.assertEqual([p["updates"] for p in st["profiles"]], [2, 7, 2])
            self.assertEqual([p["eval"] for p in st["profiles"]], [False, True, False])
            self.assertEqual(st["profiles"][2]["config"],
                             {"schedule": "power", "update_interval": "3ba", "gamma": 6.94})
            self.assertEqual(st["profiles"][1]["config"]["update_after_step"], 2)

            training = {k: v.detach().clone() for k, v in model.state_dict().items()}
            for name in PROFILES:
                with ema.eval(profile=name):
                    for k, p in model.named_parameters():
                        want = ref.shadow[name][k].to(p.dtype)
                        self.assertTrue(torch.equal(bits(p.detach()), bits(want)), (name, k))
                for k, v in model.state_dict().items():
                    self.assertTrue(torch.equal(bits(v), bits(training[k])))
            ema.swap("ema", profile="p")
            for k, p in model.named_parameters():
                self.assertTrue(torch.equal(bits(p.detach()),
                                            bits(ref.shadow["p"][k].to(p.dtype))))
            ema.swap("train")
            with ema.eval():  # the eval profile, "warm"
                w = dict(model.named_parameters())["0.weight"].detach().clone()
            self.assertTrue(torch.equal(bits(w), bits(ref.shadow["warm"]["0.weight"])))
            with self.assertRaises(emaclient.Error) as cm:
                ema.swap("ema", profile="nope")
            self.assertEqual(cm.exception.code, "BADARG")

            state = ema.state_dict()
            self.assertEqual(sorted(state["emad"]["profiles"]), ["fast", "p", "warm"])
            saved = {n: {k: v.clone() for k, v in s.items()} for n, s in ref.shadow.items()}
            for b in range(8, 10):
                step(model, b)
                ema.batch_end(batch=b, wait=True)
                ref.batch_end(model, b)
            self.check(ema, ref)
            ema.load_state_dict(state)
            ref.shadow = saved
            ref.last_power = 6
            self.check(ema, ref)
            for b in range(8, 11):
                step(model, b)
                ema.batch_end(batch=b, wait=True)
                ref.batch_end(model, b)
            self.check(ema, ref)

    def test_checkpoint_with_a_later_eval_profile_swapped_in_resumes(self):
        """checkpoint() swaps in the eval profile ("warm", the second): state_dict's ema_model
        then holds the training weights, and a new EMA resumes every profile bit for bit."""
        d = self.daemon()
        model = make_model()
        with EMA(model, socket=d.sock, session="ckpt", profiles=PROFILES,
                 eval_profile="warm") as ema:
            ref = Reference(model)
            for b in range(1, 8):
                step(model, b)
                ema.batch_end(batch=b, wait=True)
                ref.batch_end(model, b)
            # Outside a swap, ema_model is the eval profile's weights, not the first's.
            idle = ema.state_dict(save_in_emad=False)["ema_model"]["named_parameters_dict"]
            want = ref.shadow["warm"]["0.weight"]
            self.assertTrue(torch.equal(bits(idle["0.weight"]), bits(want)))
            training = {k: v.detach().clone() for k, v in model.named_parameters()}
            ema.checkpoint(batch=7)
            self.assertTrue(ema.active)
            state = ema.state_dict()
            held = state["ema_model"]["named_parameters_dict"]
            for k, v in training.items():
                self.assertTrue(torch.equal(bits(held[k]), bits(v)), k)
            saved = {n: ema.shadow_state_dict(profile=n) for n in PROFILES}
            ema.close(keep=False)
        model2 = make_model()
        with EMA(model2, socket=d.sock, session="ckpt", profiles=PROFILES,
                 eval_profile="warm") as ema2:
            ema2.load_state_dict(state)
            for n in PROFILES:
                got = ema2.shadow_state_dict(profile=n)
                for k, v in saved[n].items():
                    self.assertTrue(torch.equal(bits(got[k]), bits(v)), (n, k))
            # The model has its training weights back (the checkpoint was taken swapped in).
            for k, p in model2.named_parameters():
                self.assertTrue(torch.equal(bits(p.detach()), bits(training[k])), k)

    def test_checkpoint_resumes_without_emads_state_file(self):
        """A checkpoint of three profiles (composer, warm-up, power) resumes from its own
        contents on a new emad whose state directory was wiped (another machine): every
        profile's shadow, counters and schedule state bit for bit, then training goes on
        exactly as without the interruption."""
        import shutil
        d = self.daemon()
        model = make_model()
        ref = Reference(model)
        with EMA(model, socket=d.sock, session="wiped", profiles=PROFILES,
                 eval_profile="warm") as ema:
            for b in range(1, 8):
                step(model, b)
                ema.batch_end(batch=b, wait=True)
                ref.batch_end(model, b)
            state = ema.state_dict()
            before = {p["name"]: p for p in ema.state()["profiles"]}
            weights = {k: v.clone() for k, v in model.state_dict().items()}
        d.kill()
        shutil.rmtree(d.state_dir)
        d.start()
        model2 = make_model()
        model2.load_state_dict(weights)
        with EMA(model2, socket=d.sock, session="wiped", profiles=PROFILES,
                 eval_profile="warm") as ema2:
            ema2.load_state_dict(state)
            self.check(ema2, ref)
            now = {p["name"]: p for p in ema2.state()["profiles"]}
            for name in PROFILES:
                for k in ("started", "updates", "last_batch", "last_decay"):
                    self.assertEqual(now[name][k], before[name][k], (name, k))
            for b in range(8, 14):
                step(model2, b)
                ema2.batch_end(batch=b, wait=True)
                ref.batch_end(model2, b)
                self.check(ema2, ref)
            self.assertEqual([p["updates"] for p in ema2.state()["profiles"]], [5, 13, 4])

    def test_health_of_every_profile(self):
        """ema.health(profile=NAME): each profile's own distance (RMS of its shadow minus the
        params before its last update), counted over its own updates."""
        d = self.daemon()
        model = make_model()
        with EMA(model, socket=d.sock, session="hp", profiles=PROFILES) as ema:
            ref = Reference(model)
            want = {}
            for b in range(1, 8):
                step(model, b)
                before = {n: {k: v.clone() for k, v in s.items()} for n, s in ref.shadow.items()}
                ema.batch_end(batch=b, wait=True)
                ref.batch_end(model, b)
                for name, due in (("fast", b >= 4 and b % 2 == 0), ("warm", True),
                                  ("p", b % 3 == 0)):
                    if due:
                        sq = sum(float(((before[name][k].double() - p.detach().double()) ** 2)
                                       .sum()) for k, p in model.named_parameters())
                        n = sum(p.numel() for p in model.parameters())
                        want[name] = (sq / n) ** 0.5
            checked = {"fast": 2, "warm": 7, "p": 2}
            for name in PROFILES:
                h = ema.health(profile=name)
                self.assertEqual(h["updates_checked"], checked[name], name)
                self.assertAlmostEqual(h["distance"], want[name], delta=1e-5 * want[name])
                self.assertEqual(h["alarms"], [])
                self.assertFalse(h["last_update_noop"])
            self.assertIn("nonfinite_total", ema.health())
            with self.assertRaises(KeyError):
                ema.health(profile="nope")

    def test_single_profile_state_dict_is_unchanged(self):
        d = self.daemon()
        model = torch.nn.Linear(3, 2)
        with EMA(model, socket=d.sock, session="plain", smoothing=0.5) as ema:
            ema.batch_end(wait=True)
            self.assertEqual(ema.profiles, ["ema"])
            self.assertNotIn("profiles", ema.state_dict(save_in_emad=False)["emad"])
            self.assertNotIn("profiles", ema.state())
            ema.swap("ema", profile="ema")
            ema.swap("train")
            # profile="ema" names the one profile there is: the session's own signals. (The
            # first update started the EMA: nothing to compare before it.)
            ema.batch_end(wait=True)
            whole, own = ema.health(), ema.health(profile="ema")
            self.assertEqual(sorted(own), ["alarms", "distance", "last_update_noop",
                                           "noop_updates", "updates_checked"])
            for k in ("updates_checked", "distance", "noop_updates", "last_update_noop"):
                self.assertEqual(own[k], whole[k], k)
            self.assertEqual(own["updates_checked"], 1)
            with self.assertRaises(KeyError):
                ema.health(profile="fast")

    def test_bad_profiles_are_refused(self):
        d = self.daemon()
        with self.assertRaises(ValueError):
            EMA(torch.nn.Linear(2, 2), socket=d.sock, session="x", half_life="10ba",
                profiles={"a": {}})
        with self.assertRaises(ValueError):
            EMA(torch.nn.Linear(2, 2), socket=d.sock, session="x", profiles={"a": {}},
                eval_profile="b")
        with self.assertRaises(emaclient.Error) as cm:
            EMA(torch.nn.Linear(2, 2), socket=d.sock, session="x",
                profiles={"a": {"sigma_rel": 0.5}})
        self.assertEqual(cm.exception.code, "BADARG")
        self.assertIn("config.profiles.a.sigma_rel", str(cm.exception))


if __name__ == "__main__":
    unittest.main()
