//! OS processes the harness controls: started with their own environment and log file, killed
//! with SIGKILL, stopped gracefully with SIGTERM, paused with SIGSTOP and resumed with SIGCONT.
//! Signals go through the `kill` command so the harness needs no unsafe code.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};

/// A process definition and, while it runs, its child.
#[derive(Debug)]
pub struct ManagedProcess {
    /// Short name used in logs and reports.
    pub name: String,
    program: PathBuf,
    args: Vec<String>,
    env: BTreeMap<String, String>,
    working_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl ManagedProcess {
    /// Describes a process; nothing runs until [`ManagedProcess::start`].
    pub fn new(
        name: &str,
        program: PathBuf,
        args: Vec<String>,
        env: BTreeMap<String, String>,
        working_dir: PathBuf,
    ) -> Self {
        let log = working_dir.join(format!("{name}.log"));
        Self {
            name: name.to_string(),
            program,
            args,
            env,
            working_dir,
            log,
            child: None,
        }
    }

    /// Sets an environment variable for the next start.
    pub fn set_env(&mut self, name: &str, value: &str) {
        self.env.insert(name.to_string(), value.to_string());
    }

    /// Starts the process, appending its output to `<working dir>/<name>.log`.
    pub fn start(&mut self) -> anyhow::Result<()> {
        if self.is_running() {
            return Ok(());
        }
        let log = OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(&self.env)
            .current_dir(&self.working_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {} ({})", self.name, self.program.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Whether the process is alive.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// The file its output goes to.
    pub fn log_path(&self) -> &std::path::Path {
        &self.log
    }

    async fn signal(&self, signal: &str) -> anyhow::Result<()> {
        let Some(pid) = self.pid() else { return Ok(()) };
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .await?;
        anyhow::ensure!(status.success(), "kill -{signal} {pid} ({}) failed", self.name);
        Ok(())
    }

    /// SIGKILL: the process dies at once, mid-work.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        // A stopped process must be continued to die promptly.
        self.signal("CONT").await.ok();
        if let Some(child) = &mut self.child {
            child.kill().await.ok();
        }
        self.child = None;
        Ok(())
    }

    /// SIGTERM, then SIGKILL if it has not exited within `grace`. Returns whether it exited by
    /// itself (false: it had to be killed).
    pub async fn terminate(&mut self, grace: Duration) -> anyhow::Result<bool> {
        self.signal("CONT").await.ok();
        self.signal("TERM").await.ok();
        let mut exited = true;
        if let Some(child) = &mut self.child {
            if tokio::time::timeout(grace, child.wait()).await.is_err() {
                exited = false;
                child.kill().await.ok();
            }
        }
        self.child = None;
        Ok(exited)
    }

    /// SIGSTOP: the process freezes (no heartbeats, no work).
    pub async fn pause(&self) -> anyhow::Result<()> {
        self.signal("STOP").await
    }

    /// SIGCONT: a paused process goes on.
    pub async fn resume(&self) -> anyhow::Result<()> {
        self.signal("CONT").await
    }
}
