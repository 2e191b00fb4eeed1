//! Rolling activation (step 8 of the parent's list): after every host downloaded, the
//! hosts that hold the release are activated in waves through `corvid activate`
//! ([`super::ops`]), and a failed wave stops the rollout (and may roll back).
//!
//! Separate from the parent, which runs the download phases; this runs only with
//! `--batch`.

use super::*;

impl Deploy<'_> {
    /// Rolling activation, after every host downloaded: the hosts that hold the release
    /// are activated in waves (`corvid activate` on each, with the hook, the check and
    /// `--keep`); the first wave with a failure stops the rollout, the later waves keep
    /// their old release, and with `--rollback-on-failure` the hosts of the failed wave
    /// that flipped go back to the release they ran before.
    pub(super) fn rollout(&mut self, batch: Batch, on_event: &mut dyn FnMut(&FleetEvent)) {
        let plan = self.plan;
        let ready: Vec<usize> = (0..self.hosts.len())
            .filter(|&i| self.results[i].as_ref().is_some_and(|r| r.outcome.ok()))
            .collect();
        let size = batch.size(self.hosts.len());
        let dest = plan.dest.to_str().unwrap_or_default().to_string();
        let args = activate_args(plan, &dest);
        let mut stopped_at: Option<usize> = None;
        for (w, wave) in ready.chunks(size).enumerate() {
            let wave_no = w + 1;
            if let Some(failed) = stopped_at {
                for &i in wave {
                    self.set_failed(i, HostError::NotActivated(failed));
                }
                continue;
            }
            let names: Vec<String> = wave.iter().map(|&i| self.hosts[i].clone()).collect();
            let answers: Vec<HostAnswer<Activated>> =
                ops::on_hosts(&plan.ssh, &names, plan.parallel, &plan.remote_corvid, &args);
            let mut ok = true;
            // Hosts that flipped, with the release they ran before.
            let mut flipped: Vec<(usize, Option<String>)> = Vec::new();
            for (&i, a) in wave.iter().zip(answers) {
                match a {
                    HostAnswer::Ok(act) => {
                        flipped.push((i, act.was.clone()));
                        if let Some(r) = self.results[i].as_mut() {
                            r.hook = act.hook.clone();
                            r.pruned = act.pruned.clone();
                        }
                        if let Some(why) = act.failure() {
                            ok = false;
                            self.set_failed(i, HostError::Activation(why));
                        }
                    }
                    HostAnswer::Failed(e) | HostAnswer::Unreachable(e) => {
                        ok = false;
                        self.set_failed(i, HostError::Activation(e));
                    }
                }
            }
            let mut rolled_back = Vec::new();
            if !ok {
                stopped_at = Some(wave_no);
                if plan.rollback_on_failure {
                    rolled_back = self.roll_back(&flipped, &dest);
                }
            }
            on_event(&FleetEvent::Wave {
                wave: wave_no,
                hosts: names,
                ok,
                rolled_back,
            });
        }
    }

    /// Returns each host in `flipped` to the release it ran before (`corvid activate
    /// --tag OLD`); the names of those that are back.
    fn roll_back(&mut self, flipped: &[(usize, Option<String>)], dest: &str) -> Vec<String> {
        let plan = self.plan;
        let mut back = Vec::new();
        for (i, was) in flipped {
            let host = self.hosts[*i].clone();
            let why = match was {
                None => "no release was active before; nothing to roll back to".to_string(),
                Some(old) => {
                    let args: Vec<String> = vec![
                        "activate".into(),
                        "--dest".into(),
                        dest.to_string(),
                        "--tag".into(),
                        old.clone(),
                    ];
                    match ops::on_hosts::<Activated>(
                        &plan.ssh,
                        std::slice::from_ref(&host),
                        1,
                        &plan.remote_corvid,
                        &args,
                    )
                    .pop()
                    {
                        Some(HostAnswer::Ok(_)) => {
                            back.push(host.clone());
                            format!("rolled back to {old}")
                        }
                        Some(HostAnswer::Failed(e) | HostAnswer::Unreachable(e)) => {
                            format!("rollback to {old} failed: {e}")
                        }
                        None => format!("rollback to {old} failed"),
                    }
                }
            };
            let prior = match self.results[*i].as_ref().map(|r| &r.outcome) {
                Some(HostOutcome::Failed(HostError::Activation(w))) => format!("{w}; "),
                _ => "the wave failed; ".to_string(),
            };
            self.set_failed(*i, HostError::Activation(format!("{prior}{why}")));
        }
        back
    }

    /// Marks a host that has a result as failed (a rollout step after its download).
    fn set_failed(&mut self, i: usize, why: HostError) {
        if let Some(r) = self.results[i].as_mut() {
            r.outcome = HostOutcome::Failed(why);
        }
    }
}

/// `corvid activate` for this release, with the hook, the check and `--keep` of the plan.
fn activate_args(plan: &DeployPlan, dest: &str) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "activate".into(),
        "--dest".into(),
        dest.to_string(),
        "--tag".into(),
        plan.tag.clone(),
    ];
    for (flag, v) in [
        ("--after-activate", plan.after_activate.clone()),
        ("--check", plan.check.clone()),
        ("--keep", plan.keep.map(|n| n.to_string())),
    ] {
        if let Some(v) = v {
            args.extend([flag.to_string(), v]);
        }
    }
    if plan.after_activate.is_some() || plan.check.is_some() {
        args.extend([
            "--hook-timeout".into(),
            format!("{}ms", plan.hook_timeout.as_millis()),
        ]);
    }
    args
}
