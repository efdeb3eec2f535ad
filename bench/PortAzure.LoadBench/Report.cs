using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;

namespace PortAzure.LoadBench;

/// <summary>Writes results.md next to the logs: machine, every number, the ratios and the targets.</summary>
internal sealed class Report(string outDir)
{
    private readonly StringBuilder _md = new();

    public void Line(string text = "") => _md.AppendLine(text);

    public void Machine(Settings settings, int redisPid)
    {
        var cpu = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal))?.Split(':', 2)[1].Trim() ?? "?";
        var mem = File.ReadLines("/proc/meminfo").FirstOrDefault(l => l.StartsWith("MemTotal", StringComparison.Ordinal))?.Split(':', 2)[1].Trim() ?? "?";
        Line("## Machine");
        Line();
        Line($"- CPUs (nproc): {Environment.ProcessorCount}; model: {cpu}; memory: {mem}");
        Line($"- .NET runtime: {RuntimeInformation.FrameworkDescription}; SDK: {Run("dotnet", "--version")}; {Run("redis-server", "--version")}");
        Line($"- OS: {RuntimeInformation.OSDescription}");
        Line($"- load average at start: {File.ReadAllText("/proc/loadavg").Trim()}");
        Line($"- CPUs allowed: generator and services {CpusAllowed("self")}; Redis {CpusAllowed(redisPid.ToString(CultureInfo.InvariantCulture))}");
        Line($"- settings: connections {settings.Connections} (open model: {settings.OpenConnections}), Dispatcher MaxConcurrency {settings.DispatcherConcurrency}, backlog {settings.Backlog} / {settings.Backlog3}, " +
             $"service log level {settings.ServiceLogLevel ?? "as shipped (Information)"}" +
             (settings.Replica ? "; a Redis replica beside Redis on the same cores (--replica)" : "") +
             (settings.Otlp ? "; telemetry exported over OTLP/HTTP to a stand-in collector (--otlp)" : "; no telemetry exporter") +
             (settings.ServiceEnv.Count > 0 ? "; service env " + string.Join(" ", settings.ServiceEnv.Select(kv => $"{kv.Key}={kv.Value}")) : ""));
        Line();
    }

    private static string CpusAllowed(string pid) =>
        File.ReadLines($"/proc/{pid}/status").FirstOrDefault(l => l.StartsWith("Cpus_allowed_list:", StringComparison.Ordinal))?.Split(':', 2)[1].Trim() ?? "?";

    private static string Run(string file, string args)
    {
        try
        {
            using var p = Process.Start(new ProcessStartInfo(file, args) { RedirectStandardOutput = true, UseShellExecute = false })!;
            var text = p.StandardOutput.ReadToEnd().Trim();
            p.WaitForExit();
            return text;
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return "(not found)";
        }
    }

    public void Results(
        Settings settings,
        RedisBench.Result xadd,
        RedisBench.Result xaddPipelined,
        Baseline bareKestrel,
        Baseline kestrelXadd,
        LoadResult ingressMax,
        double ingressCpu,
        double redisCpu,
        (double Rate, double RateWithStartup, double Peak, double Seconds) drain1,
        IReadOnlyList<LoadResult> open,
        (double Rate, double RateWithStartup, double Peak, double Seconds) drainOpen,
        IReadOnlyList<(double Rate, LoadResult Load, Percentiles Relay)> e2e,
        LoadResult enqueue3,
        (double Rate, double RateWithStartup, double Peak, double Seconds) drain3,
        double ingressRss,
        double dispatcherRss,
        double emulatorRss,
        string? redisPeak,
        IReadOnlyList<Verification> verifications)
    {
        string F(double v) => v.ToString("0", CultureInfo.InvariantCulture);
        string Ms(double v) => v.ToString("0.00", CultureInfo.InvariantCulture);
        var bare = bareKestrel.Result;
        var ratio = ingressMax.AcceptedPerSecond / bare.RatePerSecond;
        Line("## Results");
        Line();
        Line("| what | result | baseline / target |");
        Line("| --- | --- | --- |");
        Line($"| Redis XADD, redis-benchmark -c {settings.Connections} (525-byte field) | {F(xadd.Rps)}/s (p50 {xadd.P50:0.000} ms, p99 {xadd.P99:0.000} ms) | -P 16: {F(xaddPipelined.Rps)}/s |");
        Line($"| bare Kestrel, closed loop {settings.Connections} conns, same generator | {F(bare.RatePerSecond)} req/s ({bare.StatusSummary()}); {bare.Latency()} | server CPU {F(bareKestrel.CpuPerRequest)} us/request |");
        Line($"| Kestrel + one XADD of the body before the 202, closed loop {settings.Connections} conns, same generator | {F(kestrelXadd.Result.RatePerSecond)} req/s ({kestrelXadd.Result.StatusSummary()}); {kestrelXadd.Result.Latency()} | server CPU {F(kestrelXadd.CpuPerRequest)} us/request, redis {F(kestrelXadd.RedisCpuPerRequest)} us/request |");
        Line($"| Ingress max accepted runs/s, closed loop {settings.Connections} conns, signed, unique run ids | {F(ingressMax.AcceptedPerSecond)} runs/s ({ingressMax.StatusSummary()}); {ingressMax.Latency()} | {ratio:P0} of bare Kestrel (target >= 60 %) {(ratio >= 0.6 ? "MET" : "MISSED")}; {ingressMax.AcceptedPerSecond / kestrelXadd.Result.RatePerSecond:P0} of Kestrel + XADD; CPU per run: Ingress {F(ingressCpu)} us, redis {F(redisCpu)} us |");
        foreach (var o in open)
        {
            var p = o.Latency();
            Line($"| Ingress open model {F(o.TargetRate)} runs/s ({o.Name[4..]} % of max) | p50 {Ms(p.P50)} ms, p99 {Ms(p.P99)} ms, p99.9 {Ms(p.P999)} ms (max {Ms(p.Max)}, n={p.Count}) | {o.StatusSummary()} |");
        }
        foreach (var (rate, load, relay) in e2e)
        {
            var answer = load.Latency();
            var verdict = rate == 500 ? $"target p99 <= 10 ms {(relay.P99 <= 10 ? "MET" : "MISSED")}, p50 <= 2 ms {(relay.P50 <= 2 ? "MET" : "MISSED")}" : "";
            Line($"| relay-added latency at {F(rate)} runs/s (send -> emulator receivedAt) | p50 {Ms(relay.P50)} ms, p99 {Ms(relay.P99)} ms, p99.9 {Ms(relay.P999)} ms (max {Ms(relay.Max)}, n={relay.Count}) | {verdict} (Ingress answer p50 {Ms(answer.P50)} ms, p99 {Ms(answer.P99)} ms) |");
        }
        Line($"| backlog drain, 1 Dispatcher, {settings.Backlog} runs | {F(drain1.Rate)} deliveries/s ({drain1.Seconds:0.0} s incl. start: {F(drain1.RateWithStartup)}/s; best 1-s window {F(drain1.Peak)}/s) | target >= 5,000/s {(drain1.Rate >= 5000 ? "MET" : "MISSED")} |");
        Line($"| backlog drain, 1 Dispatcher, open-model runs | {F(drainOpen.Rate)} deliveries/s (best 1-s window {F(drainOpen.Peak)}/s) | |");
        Line($"| backlog drain, 3 Dispatchers, {settings.Backlog3} runs | {F(drain3.Rate)} deliveries/s ({drain3.Seconds:0.0} s incl. start; best 1-s window {F(drain3.Peak)}/s) | {drain3.Rate / drain1.Rate:0.00}x one Dispatcher (enqueued at {F(enqueue3.RatePerSecond)}/s) |");
        Line($"| peak RSS (VmHWM) | Ingress {ingressRss:0} MB, Dispatcher {dispatcherRss:0} MB (max over all) | target <= 200 MB each: {(ingressRss <= 200 && dispatcherRss <= 200 ? "MET" : "MISSED")}; emulator {emulatorRss:0} MB, redis used_memory_peak {redisPeak} |");
        Line();
        Line("## Lost / duplicated runs");
        Line();
        Line("| scenario | accepted | emulator records | lost | duplicated | late (an earlier scenario's run again) | unexpected | bad signature/status | relay quiet | verdict |");
        Line("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
        foreach (var v in verifications)
        {
            Line($"| {v.Scenario} | {v.Accepted} | {v.DeliveredRecords} | {v.Lost} | {v.Duplicated} | {v.Late} | {v.Unexpected} | {v.BadSignature} | {(v.Quiescent ? "yes" : "NO")} | {(v.Ok ? "OK" : "FAIL")} |");
        }
        Line();
        Line($"- load average at end: {File.ReadAllText("/proc/loadavg").Trim()}");
    }

    public void Write()
    {
        var text = _md.ToString();
        File.WriteAllText(Path.Combine(outDir, "results.md"), text);
        Console.WriteLine();
        Console.WriteLine(text);
    }
}
