"""emaclient.torch under torch.distributed (docs/scaleout.md "Python"): sharded EMAs, group
checkpoints, resharding, DDP, a rank killed during a checkpoint. Each rank is a process
(torch.multiprocessing spawn, gloo on localhost: scaleout_worker.py); two emad instances on
their own sockets and state directories are two "nodes".

- 4 ranks on 2 nodes, each holding a row slice of every tensor (f32, bf16, an i64 buffer),
  trained as the full model is (the full step, sliced): the consolidated group checkpoint equals
  bit for bit the shadow of a single-process EMA of the full model, at two checkpoints.
- Resharding 4 -> 2 and then 2 -> 4, each resuming from the last group checkpoint: the
  consolidated EMA equals the uninterrupted single-process one bit for bit.
- An EMA of two profiles on 2 ranks: the group checkpoint holds both (the eval profile's
  under the plain names); `emactl consolidate --profile` gives each, bit for bit a
  single-process EMA's; resumed on 1 rank, every profile goes on bit for bit. A checkpoint
  with profiles into an EMA without them or with others, and the reverse: BADFILE, nothing
  loaded.
- DDP, 2 ranks on one node, replicas of one session (replicas=2): emad holds one shadow for both
  (status: 2 replicas attached, one session, one shadow); eval() shows on both ranks the EMA
  weights, equal bit for bit to a single-process EMA of the same training weights; the training
  weights come back bit for bit; the group checkpoint writes the replicas once; ranks at
  different batches are refused on every rank, nothing written.
- One process without torch.distributed (a world of one): a checkpoint read back by block; a
  directory that holds a checkpoint is not written over.
- A rank SIGKILLed during a group checkpoint (after writing its shard file): rank 0's error
  names it, no manifest exists; a job resumed from the previous checkpoint completes, bit-exact.
- Shard files that disagree with the manifest on the batch are refused with a clear error.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import unittest

import emadtest
import scaleout_worker as W

import torch
import torch.multiprocessing as mp

from emaclient import Error, _safetensors
from emaclient import distributed as edist
from emaclient.torch import EMA

SPAWN_TIMEOUT = 120


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reference(sock, batches, profiles=None, eval_profile=None):
    """The single-process EMA of the full model: {batch: shadow_state_dict()};
    with profiles, {batch: {profile: shadow_state_dict(profile=)}}."""
    full = W.make_full()
    schedule = {"half_life": W.HALF_LIFE} if profiles is None else \
        {"profiles": profiles, "eval_profile": eval_profile}
    ema = EMA(full, socket=sock, session="reference", **schedule)
    out = {}
    try:
        for step in range(max(batches)):
            ema.wait()
            W.full_step(full, step)
            ema.batch_end(batch=step + 1)
            if step + 1 in batches:
                out[step + 1] = ema.shadow_state_dict() if profiles is None else \
                    {p: ema.shadow_state_dict(profile=p) for p in profiles}
    finally:
        ema.close()
    return out


class Job:
    """One torch.distributed job of `world` spawned ranks."""

    def __init__(self, test, target, world, plan):
        self.out = tempfile.mkdtemp(prefix="emad-scaleout-")
        test.addCleanup(shutil.rmtree, self.out, True)
        ctx = mp.get_context("spawn")
        port = free_port()
        self.procs = [ctx.Process(target=target, args=(r, world, port, plan, self.out))
                      for r in range(world)]
        for p in self.procs:
            p.start()
        self.results = []
        try:
            for p in self.procs:
                p.join(SPAWN_TIMEOUT)
        finally:
            for p in self.procs:
                if p.is_alive():
                    p.kill()
                    p.join()
        for r in range(world):
            seg = os.path.join(self.out, "segment-%d" % r)
            if os.path.exists(seg):
                with open(seg) as f:
                    name = f.read().strip()
                test.leftovers.extra_segments.add(name)
                if self.procs[r].exitcode != 0:
                    # killed: a crashed trainer's segment is the administrator's to remove
                    try:
                        os.unlink("/dev/shm/" + name.lstrip("/"))
                    except OSError:
                        pass
            path = os.path.join(self.out, "rank-%d.json" % r)
            if os.path.exists(path):
                with open(path) as f:
                    self.results.append(json.load(f))
            else:
                self.results.append({"ok": False, "exitcode": self.procs[r].exitcode})
            stack = os.path.join(self.out, "stack-%d.txt" % r)
            if os.path.exists(stack) and os.path.getsize(stack) > 0:
                with open(stack) as f:  # the rank hung: where it was
                    self.results[-1]["stack"] = f.read()

    def check_ok(self, test):
        for r, res in enumerate(self.results):
            test.assertTrue(res.get("ok"), "rank %d: %s" % (r, res.get("trace") or res))


def consolidated(manifest, profile=None):
    out = manifest + ".%s.safetensors" % (profile or "full")
    p = subprocess.run([emadtest.EMACTL_BIN, "consolidate", manifest, "--out", out] +
                       (["--profile", profile] if profile else []),
                       capture_output=True, text=True)
    if p.returncode != 0:
        raise AssertionError("emactl consolidate: %s" % p.stderr)
    tensors, _ = _safetensors.read(out)
    return tensors


class ScaleOut(emadtest.EmadTestCase):

    def setUp(self):
        super().setUp()
        self.tmp = tempfile.mkdtemp(prefix="emad-scaleout-ckpt-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        self.node_a = self.daemon()
        self.node_b = self.daemon()

    def plan(self, world, **kw):
        nodes = [self.node_a.sock, self.node_b.sock]
        plan = {"socket": [nodes[r * 2 // world] if world > 2 else nodes[0]
                           for r in range(world)],
                "job": "mlp", "start": 0, "steps": 0, "checkpoints": {}, "resume": None,
                "kill": None}
        plan.update(kw)
        return plan

    def ckpt(self, name):
        return os.path.join(self.tmp, name)

    def assert_equal_bits(self, got, want, where):
        diff = emadtest.first_difference(got, want)
        self.assertIsNone(diff, "%s: %s" % (where, diff))

    def test_sharded_ema_consolidates_and_reshards_bit_exact(self):
        ref = reference(self.node_a.sock, {6, 9, 12, 15})
        # 4 ranks on 2 nodes, checkpoints at 6 and 9.
        job = Job(self, W.run, 4, self.plan(4, steps=9, checkpoints={
            "6": self.ckpt("w4-6"), "9": self.ckpt("w4-9")}))
        job.check_ok(self)
        with open(os.path.join(self.ckpt("w4-9"), edist.MANIFEST)) as f:
            m = json.load(f)
        self.assertEqual((m["batch"], m["world_size"], len(m["shards"])), (9, 4, 4))
        self.assert_equal_bits(consolidated(job.results[0]["manifests"][0]), ref[6], "4 ranks, 6")
        self.assert_equal_bits(consolidated(job.results[0]["manifests"][1]), ref[9], "4 ranks, 9")
        # 4 -> 2: resume from batch 6, train to 12.
        job = Job(self, W.run, 2, self.plan(2, start=6, steps=6, resume=self.ckpt("w4-6"),
                                            checkpoints={"12": self.ckpt("w2-12")}))
        job.check_ok(self)
        self.assertEqual([r["resumed_at"] for r in job.results], [6, 6])
        self.assert_equal_bits(consolidated(job.results[0]["manifests"][0]), ref[12], "4 -> 2")
        # 2 -> 4: resume from batch 12, train to 15.
        job = Job(self, W.run, 4, self.plan(4, start=12, steps=3, resume=self.ckpt("w2-12"),
                                            checkpoints={"15": self.ckpt("w4-15")}))
        job.check_ok(self)
        self.assert_equal_bits(consolidated(job.results[0]["manifests"][0]), ref[15], "2 -> 4")

    PROFILES = {"fast": {"half_life": "2ba"}, "p10": {"sigma_rel": 0.10}}

    def test_sharded_ema_with_profiles_checkpoints_every_profile_and_resumes_bit_exact(self):
        """2 ranks, two profiles, the eval profile the second: the group
        checkpoint holds both; consolidated per profile (the eval profile by
        default) they are a single-process EMA's bit for bit; a resume on one
        rank (2 -> 1) goes on bit for bit as the EMA that never stopped."""
        prof = {"profiles": self.PROFILES, "eval_profile": "p10"}
        ref = reference(self.node_a.sock, {4, 7}, **prof)
        job = Job(self, W.run, 2, self.plan(2, steps=4, checkpoints={"4": self.ckpt("p4")},
                                            **prof))
        job.check_ok(self)
        manifest = job.results[0]["manifests"][0]
        with open(manifest) as f:
            m = json.load(f)
        cfg = m["config"]["emaclient"]
        self.assertEqual(cfg["eval_profile"], "p10")
        self.assertEqual([p["name"] for p in cfg["profiles"]], ["fast", "p10"])
        self.assertEqual(m["config"]["ema"], {"profiles": self.PROFILES, "eval_profile": "p10"})
        names = {t["name"] for t in m["shards"][0]["tensors"]}
        self.assertIn("w1", names)
        self.assertIn(".profile/fast/w1", names)
        self.assertNotIn(".profile/p10/w1", names)  # the eval profile's are the plain names
        self.assert_equal_bits(consolidated(manifest), ref[4]["p10"], "default: eval profile")
        for p in self.PROFILES:
            self.assert_equal_bits(consolidated(manifest, p), ref[4][p], "profile " + p)
        self.assertFalse(emadtest.first_difference(ref[4]["fast"], ref[4]["p10"]) is None)
        out = os.path.join(self.tmp, "fast.py.safetensors")
        edist.consolidate(manifest, out, profile="fast")
        self.assert_equal_bits(_safetensors.read(out)[0], ref[4]["fast"], "consolidate()")
        p = subprocess.run([emadtest.EMACTL_BIN, "consolidate", manifest, "--out", out,
                            "--profile", "slow"], capture_output=True, text=True)
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn('no profile "slow"; its profiles: fast, p10 (the eval profile: p10)',
                      p.stderr)
        # 2 -> 1: resume from batch 4, train to 7.
        job = Job(self, W.run, 1, self.plan(1, start=4, steps=3, resume=self.ckpt("p4"),
                                            job="mlp1", checkpoints={"7": self.ckpt("p7")},
                                            **prof))
        job.check_ok(self)
        self.assertEqual(job.results[0]["resumed_at"], 4)
        manifest = job.results[0]["manifests"][0]
        for p in self.PROFILES:
            self.assert_equal_bits(consolidated(manifest, p), ref[7][p], "resumed, " + p)
        self.check_profile_mismatches_load_nothing(self.ckpt("p4"))

    def check_profile_mismatches_load_nothing(self, ckpt):
        """A checkpoint with profiles into an EMA without, or with other
        profiles, and one without into an EMA with: BADFILE, nothing loaded."""
        local, spec = W.local_model(W.make_full(), 0, 2)
        plain = self.ckpt("plain")
        one = EMA(W.make_full(), half_life=W.HALF_LIFE, socket=self.node_a.sock, session="one")
        try:
            one.batch_end(batch=1)
            one.group_checkpoint(plain, job="one")
        finally:
            one.close()
        cases = [
            (dict(half_life=W.HALF_LIFE), ckpt,
             "the checkpoint is of an EMA with profiles (fast, p10), this EMA has none"),
            (dict(profiles={"fast": {"half_life": "2ba"}, "p20": {"sigma_rel": 0.2}}), ckpt,
             "the checkpoint's profiles (fast, p10, settings"),
            (dict(profiles=self.PROFILES), ckpt,  # the eval profile: "fast" (the first)
             "the checkpoint's profiles (fast, p10, settings"),
            (dict(profiles=self.PROFILES, eval_profile="p10"), plain,
             "this EMA has profiles (fast, p10), the checkpoint none"),
        ]
        for i, (schedule, path, msg) in enumerate(cases):
            with self.subTest(case=i):
                m = local if path == ckpt else W.make_full()
                ema = EMA(m, socket=self.node_a.sock, session="mismatch%d" % i,
                          shard=spec if path == ckpt else None, **schedule)
                try:
                    ema.batch_end(batch=1)
                    before = {p: ema.shadow_state_dict(profile=p) for p in ema.profiles}
                    st = ema.state()
                    with self.assertRaises(Error) as cm:
                        ema.load_group_checkpoint(path)
                    self.assertEqual(cm.exception.code, "BADFILE")
                    self.assertIn(msg, str(cm.exception))
                    self.assertIn("nothing was loaded", str(cm.exception))
                    for p in ema.profiles:
                        self.assert_equal_bits(ema.shadow_state_dict(profile=p), before[p], p)
                    after = ema.state()
                    self.assertEqual((after["updates"], after["last_time"]),
                                     (st["updates"], st["last_time"]))
                finally:
                    ema.close()

    def test_rank_killed_during_checkpoint_leaves_no_manifest_and_resume_completes(self):
        ref = reference(self.node_a.sock, {8})
        job = Job(self, W.run, 2, self.plan(2, steps=6, timeout=10, kill={"rank": 1, "batch": 6},
                                            checkpoints={"3": self.ckpt("k3"),
                                                         "6": self.ckpt("k6")}))
        self.assertEqual(job.procs[1].exitcode, -9)
        r0 = job.results[0]
        self.assertFalse(r0["ok"])
        self.assertEqual(r0["code"], "TIMEOUT", r0)
        self.assertIn("rank 1", r0["error"])
        self.assertIn("no manifest was written", r0["error"])
        self.assertTrue(os.path.exists(os.path.join(self.ckpt("k6"), "rank-00001.safetensors")))
        self.assertFalse(os.path.exists(os.path.join(self.ckpt("k6"), edist.MANIFEST)))
        with self.assertRaises(Error) as cm:
            edist.Checkpoint(self.ckpt("k6"))
        self.assertEqual(cm.exception.code, "SYSTEM")
        # The killed rank's session is left detached in emad, as any crashed trainer's.
        with emadtest.emaclient.Client(self.node_a.sock) as c:
            c.drop("mlp.rank1")
        job = Job(self, W.run, 2, self.plan(2, start=3, steps=5, resume=self.ckpt("k3"),
                                            checkpoints={"8": self.ckpt("k8")}))
        job.check_ok(self)
        self.assert_equal_bits(consolidated(job.results[0]["manifests"][0]), ref[8], "resumed")

    def test_ddp_replicas_share_one_shadow_and_eval_shows_the_ema(self):
        job = Job(self, W.run_ddp, 2, self.plan(2, steps=5, checkpoint=self.ckpt("ddp")))
        job.check_ok(self)
        r0, r1 = job.results
        for r in (r0, r1):
            self.assertTrue(r["eval_is_ema"], r)
            self.assertTrue(r["eval_differs_from_training"], r)
            self.assertTrue(r["training_back"], r)
            self.assertEqual(r["names"], ["0.bias", "0.weight", "2.bias", "2.weight"])
        self.assertEqual(r0["eval_digest"], r1["eval_digest"])
        self.assertEqual(r0["training_digest"], r1["training_digest"])
        # One session, one shadow: both ranks see the same session and shadow, with both
        # replicas attached, and the shadow is one model's (not two).
        s0, s1 = r0["status"], r1["status"]
        self.assertEqual(s0["session"], "ddp")
        self.assertEqual((s0["session"], s0["shadow_shm"], s0["shadow_bytes"]),
                         (s1["session"], s1["shadow_shm"], s1["shadow_bytes"]))
        for st in (s0, s1):
            self.assertEqual(st["replicas"]["attached"], 2, st)
            self.assertEqual(sorted(st["replicas"]["ranks"]), [0, 1], st)
            self.assertEqual(st["replicas"]["diverged"], 0, st)
            self.assertEqual(st["group"]["replicas"], 2, st)
            self.assertEqual(st["updates"], 5, st)
        # The EMA both ranks evaluated is, bit for bit, a single-process EMA of the
        # same training weights (rank 0's, which are rank 1's: the digests above).
        weights = torch.load(os.path.join(job.out, "ddp-weights-0.pt"))
        self.assertEqual([W.digest(w) for w in weights],
                         [W.digest(w) for w in torch.load(os.path.join(job.out,
                                                                       "ddp-weights-1.pt"))])
        want, one_model = self.reference_ema(weights, "ddp.ref")
        self.assertEqual(r0["eval_digest"], want)
        self.assertEqual(r0["ema_digest"], want)
        self.assertEqual(s0["shadow_bytes"], one_model)  # one model's shadow, not two
        with open(r0["manifest"]) as f:
            m = json.load(f)
        self.assertEqual([(s["file"], s["ranks"]) for s in m["shards"]],
                         [("rank-00000.safetensors", [0, 1])])
        self.assertFalse(os.path.exists(os.path.join(self.ckpt("ddp"), "rank-00001.safetensors")))
        for r in (r0, r1):
            self.assertEqual(r["odd"][0], "STATE", r)
            self.assertIn("rank 0 at batch 5 epoch 0, rank 1 at batch 6 epoch 0", r["odd"][1])
        self.assertEqual(os.listdir(self.ckpt("ddp") + "-odd"), [])

    def reference_ema(self, weights, session, profiles=None):
        """A single-process EMA of the DDP model fed `weights`: the digest of
        its EMA weights, and its shadow's bytes; with profiles, the digest of
        each profile's shadow {profile: digest} instead of the first."""
        torch.manual_seed(3)  # the ranks' initial model
        model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(),
                                    torch.nn.Linear(8, 4))
        schedule = {"half_life": W.HALF_LIFE} if profiles is None else {"profiles": profiles}
        ema = EMA(model, socket=self.node_a.sock, session=session, **schedule)
        try:
            for step, w in enumerate(weights):
                ema.wait()
                with torch.no_grad():
                    for n, t in model.state_dict().items():
                        t.copy_(w[n])
                ema.batch_end(batch=step + 1)
            if profiles is not None:
                return {p: W.digest(ema.shadow_state_dict(profile=p)) for p in profiles}
            return W.digest(ema.ema_state_dict()), ema.state()["shadow_bytes"]
        finally:
            ema.close()

    def test_ddp_replicas_with_profiles_resume_from_a_group_checkpoint(self):
        """DDP replicas of an EMA with two profiles: the group checkpoint holds
        both, the leader alone loads them back, and each profile goes on bit
        for bit as one that never stopped."""
        job = Job(self, W.run_ddp_resume, 2,
                  self.plan(2, steps=3, more=2, via="group", profiles=self.PROFILES,
                            checkpoint=self.ckpt("ddp-prof")))
        job.check_ok(self)
        weights = torch.load(os.path.join(job.out, "ddp-weights-0.pt"))
        want = self.reference_ema(weights, "ddp.ref.prof", profiles=self.PROFILES)
        for r in job.results:
            self.assertEqual(r["profile_digests"], want, r)
            self.assertTrue(r["eval_is_ema"], r)

    def test_ddp_replicas_resume_from_a_checkpoint_bit_exact(self):
        """Every replica resumes from the same checkpoint: the leader alone
        loads the one shadow (from emad's state file, from the state dict
        alone, or from a group checkpoint), and the EMA goes on, on both ranks,
        bit for bit as one that never stopped. The leader sends its last
        batch_end before the checkpoint late: a replica's checkpoint is still
        of that batch (it once read the batch before, and its resume hung)."""
        for via in ("state_file", "checkpoint", "group"):
            with self.subTest(via=via):
                job = Job(self, W.run_ddp_resume, 2,
                          self.plan(2, steps=3, more=2, via=via,
                                    checkpoint=self.ckpt("ddp-resume")))
                job.check_ok(self)
                r0, r1 = job.results
                weights = torch.load(os.path.join(job.out, "ddp-weights-0.pt"))
                self.assertEqual(len(weights), 5)
                want = self.reference_ema(weights, "ddp.ref." + via)[0]
                want_before = self.reference_ema(weights[:3], "ddp.ref3." + via)[0]
                for r in (r0, r1):
                    if via != "group":
                        # the leader's last update a second late: every replica's state_dict
                        # waited for it
                        self.assertEqual(r["checkpoint_time"], [3, 3], r)
                    self.assertEqual(r["before"], want_before, r)
                    self.assertEqual(r["loaded"], want_before, r)
                    self.assertEqual(r["ema_digest"], want, r)
                    self.assertTrue(r["eval_is_ema"], r)
                    self.assertTrue(r["status"]["started"], r)
                    self.assertEqual(r["status"]["replicas"]["attached"], 2, r)
                self.assertEqual(r0["status"]["shadow_shm"], r1["status"]["shadow_shm"])

    def test_ddp_replica_failing_alone_fails_every_rank_without_a_hang(self):
        """A resume that fails on one replica (its state dict holds a tensor of
        another shape) raises there, and on the other ranks a STATE error naming
        it: no rank waits for it at the meeting point."""
        job = Job(self, W.run_ddp_resume, 2, self.plan(2, steps=2, more=1, via="bad",
                                                        checkpoint=self.ckpt("ddp-bad")))
        r0, r1 = job.results
        self.assertFalse(r1["ok"], r1)
        self.assertIn("ValueError", r1["error"], r1)
        self.assertIn(r1["dropped"], r1["error"], r1)
        self.assertFalse(r0["ok"], r0)
        self.assertEqual(r0["code"], "STATE", r0)
        self.assertIn("rank 1 of session ddp-bad-resumed could not load", r0["error"], r0)

    def test_single_process_checkpoint_and_an_existing_manifest_refused(self):
        """Without torch.distributed, a world of one; a directory holding a
        checkpoint is not written over."""
        full = W.make_full()
        ema = EMA(full, half_life=W.HALF_LIFE, socket=self.node_a.sock, session="one")
        try:
            for step in range(3):
                ema.wait()
                W.full_step(full, step)
                ema.batch_end(batch=step + 1)
            want = ema.shadow_state_dict()
            manifest = ema.group_checkpoint(self.ckpt("one"), job="one")
            with self.assertRaises(Error) as cm:
                ema.group_checkpoint(self.ckpt("one"), job="one")
        finally:
            ema.close()
        self.assertEqual(cm.exception.code, "USAGE")
        self.assertIn("a checkpoint is there already", str(cm.exception))
        with edist.Checkpoint(manifest) as ck:
            self.assertEqual((ck.job, ck.batch, ck.world_size), ("one", 3, 1))
            self.assertTrue(emadtest.bits_equal(ck.read("w1", (2, 0), (3, 6)), want["w1"][2:5]))
        self.assert_equal_bits(consolidated(manifest), want, "one process")

    def test_replicas_need_a_job_and_torch_distributed_to_resume(self):
        """replicas= without job= is a ValueError; a resume with replicas=
        outside torch.distributed is refused (the replicas load together)."""
        full = W.make_full()
        with self.assertRaises(ValueError):
            EMA(full, half_life=W.HALF_LIFE, socket=self.node_a.sock, replicas=2)
        ema = EMA(full, half_life=W.HALF_LIFE, socket=self.node_a.sock, job="solo", replicas=2)
        try:
            self.assertEqual(ema.session_name, "solo")
            st = ema.state()
            self.assertEqual(st["replicas"]["attached"], 1, st)
            sd = ema.state_dict()
            with self.assertRaises(Error) as cm:
                ema.load_state_dict(sd)
        finally:
            ema.close()
        self.assertEqual(cm.exception.code, "USAGE")
        self.assertIn("torch.distributed must be initialized", str(cm.exception))
        with emadtest.emaclient.Client(self.node_a.sock) as c:
            self.assertEqual(c.status()["sessions"], [])  # the last replica's close dropped it

    def replica_pair(self, job):
        """Two replicas of session `job` in this process, the first leading:
        ([two models with the same weights], leader, replica); closed at the
        test's end (a second close does nothing)."""
        models = [W.make_full(), W.make_full()]
        emas = []
        for m in models:
            emas.append(EMA(m, half_life=W.HALF_LIFE, socket=self.node_a.sock, job=job,
                            replicas=2))
            self.addCleanup(emas[-1].close)
        self.assertEqual(emas[1].state()["replicas"]["ranks"], [0, 0])
        return models, emas[0], emas[1]

    def test_a_replica_whose_leader_stays_behind_times_out_naming_both_batches(self):
        """A replica that reads the EMA at a batch the leader never reports
        waits REPLICA_WAIT seconds, then raises TIMEOUT naming its batch and
        the leader's last event."""
        ema_torch = sys.modules[EMA.__module__]
        _, leader, replica = self.replica_pair("lag")
        leader.batch_end(batch=1)
        replica.batch_end(batch=1)
        replica.ema_state_dict()  # the leader is there: no wait
        replica.batch_end(batch=2)  # the leader never sends batch 2
        saved, ema_torch.REPLICA_WAIT = ema_torch.REPLICA_WAIT, 0.5
        try:
            t0 = time.monotonic()
            with self.assertRaises(Error) as cm:
                replica.ema_state_dict()
            waited = time.monotonic() - t0
        finally:
            ema_torch.REPLICA_WAIT = saved
        self.assertEqual(cm.exception.code, "TIMEOUT")
        self.assertGreaterEqual(waited, 0.5)
        self.assertIn("replica of session lag at batch 2 epoch 0: the leader's last "
                      "event is batch 1 epoch 0 after 0.5 s", str(cm.exception))

    def test_a_replica_holding_other_weights_is_reported_diverged(self):
        """The replicas must hold the same weights: one that does not (here it
        missed a step) is caught at the batch both report, in the reply and
        in the session's state."""
        models, leader, replica = self.replica_pair("drift")
        leader.batch_end(batch=1, wait=True)
        replica.batch_end(batch=1, wait=True)
        self.assertFalse(replica.session.diverged())
        with torch.no_grad():
            for m in models:
                for p in m.parameters():
                    p.add_(0.25)
            for p in models[1].parameters():
                p.add_(1.0)  # the replica's step differs
        leader.batch_end(batch=2, wait=True)
        replica.batch_end(batch=2, wait=True)
        self.assertTrue(replica.session.diverged())
        st = replica.state()
        self.assertEqual(st["replicas"]["diverged"], 1, st)

    def test_the_leader_closing_first_leaves_the_replica_leading(self):
        """The leader's close detaches it alone: the replica leads, its own
        batch_end updates the shadow, and its close, the last, drops the
        session."""
        models, leader, replica = self.replica_pair("first")
        for b in (1, 2):
            leader.batch_end(batch=b)
            replica.batch_end(batch=b)
        before = replica.ema_state_dict()
        leader.close()
        st = replica.state()
        self.assertTrue(st["attached"], st)
        self.assertEqual(st["replicas"]["attached"], 1, st)
        with torch.no_grad():
            for p in models[1].parameters():
                p.add_(0.5)
        self.assertEqual(replica.batch_end(batch=3, wait=True).updates, 3)
        after = replica.ema_state_dict()
        self.assertTrue(any(not torch.equal(before[n], after[n]) for n in before))
        replica.close()
        with emadtest.emaclient.Client(self.node_a.sock) as c:
            self.assertNotIn("first", [x["session"] for x in c.status()["sessions"]])

    def test_shards_at_another_batch_are_refused(self):
        job = Job(self, W.run, 2, self.plan(2, steps=3, checkpoints={"3": self.ckpt("b3")}))
        job.check_ok(self)
        # Rewrite rank 1's file as the same slices at batch 2 (a file of another checkpoint).
        path = os.path.join(self.ckpt("b3"), "rank-00001.safetensors")
        tensors, _ = _safetensors.read(path)
        with open(os.path.join(self.ckpt("b3"), edist.MANIFEST)) as f:
            m = json.load(f)
        slices = [(t["name"], edist._WIRE_OF_ST[t["dtype"]], t["global_shape"], t["offsets"],
                   t["shape"], tensors[t["name"]].contiguous()) for t in m["shards"][1]["tensors"]]
        edist.write_shard(path, "mlp", 2, 0, 2, [1], slices)
        local, spec = W.local_model(W.make_full(), 1, 2)
        ema = EMA(local, half_life=W.HALF_LIFE, socket=self.node_a.sock, session="odd", shard=spec)
        try:
            with self.assertRaises(Error) as cm:
                ema.load_group_checkpoint(self.ckpt("b3"))
        finally:
            ema.close()
        self.assertEqual(cm.exception.code, "BADFILE")
        self.assertIn('"rank-00001.safetensors" at batch 2', str(cm.exception))
        self.assertIn("batch 3", str(cm.exception))


if __name__ == "__main__":
    unittest.main()
