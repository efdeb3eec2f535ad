using System.Diagnostics;
using System.Globalization;
using PortAzure.LoadBench;
using PortAzure.Redis;
using StackExchange.Redis;

CultureInfo.DefaultThreadCurrentCulture = CultureInfo.InvariantCulture;
CultureInfo.CurrentCulture = CultureInfo.InvariantCulture;

var settings = Settings.Parse(args);
var root = Settings.FindRoot();
var stamp = DateTime.UtcNow.ToString("yyyyMMdd-HHmmss", CultureInfo.InvariantCulture);
var outDir = settings.OutDir ?? Path.Combine(root, "bench", "results", stamp + (settings.Smoke ? "-smoke" : ""));
Directory.CreateDirectory(outDir);
var logs = Path.Combine(outDir, "logs");
Directory.CreateDirectory(logs);

var report = new Report(outDir);
report.Line($"# PortAzure load bench {(settings.Smoke ? "(smoke)" : "")} {stamp} UTC");
report.Line();

const string Secret = "bench-port-client-secret";
const string Org = "contoso";
const string Webhook = "deploy";
var sample = File.ReadAllBytes(Path.Combine(AppContext.BaseDirectory, "Data", "port-run-v1.sample.json"));
var runTag = Guid.NewGuid().ToString("N")[..6];
string RunIdFor(string scenario, long i) => $"r_{runTag}_{scenario}_{i:D7}";

var verifications = new List<Verification>();
var everAccepted = new HashSet<string>(StringComparer.Ordinal);
var services = new List<ServiceProcess>();
var dispatcherPeakRss = 0.0;
// A run that ends abnormally (an exception, Ctrl+C) must not leave redis-server and the services running: the next run,
// or CI, would share the two cores with them. The normal paths dispose them; these handlers are for the rest.
void KillAll()
{
    foreach (var service in services.ToArray())
    {
        service.KillIfRunning();
    }
}
AppDomain.CurrentDomain.UnhandledException += (_, _) => KillAll();
AppDomain.CurrentDomain.ProcessExit += (_, _) => KillAll();
Console.CancelKeyPress += (_, _) => KillAll();

string Dll(string project, string dir) => Path.Combine(root, dir, project, "bin", "Release", "net10.0", project + ".dll");

var redisPort = ServiceProcess.FreePort();
var redisDir = Path.Combine(outDir, "redis");
Directory.CreateDirectory(redisDir);
var redisServer = ServiceProcess.Start("redis-server", "redis-server",
    ["--port", redisPort.ToString(CultureInfo.InvariantCulture), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", redisDir],
    new Dictionary<string, string>(), Path.Combine(logs, "redis.log"), redisPort);
services.Add(redisServer);
await redisServer.WaitReadyAsync(null, TimeSpan.FromSeconds(20));
if (settings.RedisCpus is { } redisCpus)
{
    // What-if "Redis on its own cores": run the bench under `taskset -c 0 ./bench/run.sh ... --redis-cpus 1`, so that
    // the generator, both servers and the Dispatchers share CPU 0 and Redis alone has CPU 1 (-a: all its threads).
    if (OperatingSystem.IsLinux() && (Process.GetCurrentProcess().ProcessorAffinity.ToInt64() & Settings.CpuMask(redisCpus)) != 0)
    {
        Console.WriteLine($"  warning: the generator and the services may also run on CPUs {redisCpus}; start the bench under `taskset -c <the other CPUs>` (the report's \"CPUs allowed\" line shows what each side had)");
    }
    using var taskset = Process.Start("taskset", ["-a", "-pc", redisCpus, redisServer.Pid.ToString(CultureInfo.InvariantCulture)])!;
    await taskset.WaitForExitAsync();
    if (taskset.ExitCode != 0)
    {
        throw new InvalidOperationException($"taskset could not pin redis-server to CPUs {redisCpus} (exit {taskset.ExitCode}).");
    }
}
ServiceProcess? replica = null;
if (settings.Replica)
{
    // --replica: a replica of Redis on the same cores, for the cost of Ingress:WaitForReplicas (set it with --service-env);
    // without that setting the replica only adds its own work (applying the stream), the other half of an A/B.
    var replicaPort = ServiceProcess.FreePort();
    var replicaDir = Path.Combine(outDir, "redis-replica");
    Directory.CreateDirectory(replicaDir);
    replica = ServiceProcess.Start("redis-replica", "redis-server",
        ["--port", replicaPort.ToString(CultureInfo.InvariantCulture), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", replicaDir,
         "--replicaof", "127.0.0.1", redisPort.ToString(CultureInfo.InvariantCulture)],
        new Dictionary<string, string>(), Path.Combine(logs, "redis-replica.log"), replicaPort);
    services.Add(replica);
    await replica.WaitReadyAsync(null, TimeSpan.FromSeconds(20));
    using var toReplica = await ConnectionMultiplexer.ConnectAsync($"127.0.0.1:{replicaPort}");
    var linked = DateTime.UtcNow.AddSeconds(20);
    while (!((string?)await toReplica.GetServer("127.0.0.1", replicaPort).ExecuteAsync("INFO", "replication"))!.Contains("master_link_status:up", StringComparison.Ordinal))
    {
        if (DateTime.UtcNow > linked)
        {
            throw new InvalidOperationException("the Redis replica did not link to its primary within 20 s");
        }
        await Task.Delay(100);
    }
}
report.Machine(settings, redisServer.Pid);
var redisConnection = $"127.0.0.1:{redisPort},abortConnect=false";
using var redis = await ConnectionMultiplexer.ConnectAsync(redisConnection);
var db = redis.GetDatabase();

// What-if knobs for the Ingress and Dispatchers (profiling without code changes): --service-log-level, --service-env K=V.
var serviceLog = new Dictionary<string, string>(settings.ServiceEnv);
if (settings.ServiceLogLevel is { } level)
{
    serviceLog["Logging__LogLevel__Default"] = level;
}

// --otlp: the Ingress and the Dispatchers export their telemetry, as in production, to a stand-in collector (a third
// BareKestrel that counts what it receives), so that the export's cost shows in their CPU per run.
ServiceProcess? otlpSink = null;
if (settings.Otlp)
{
    otlpSink = ServiceProcess.StartDotnet("otlp-sink", Dll("PortAzure.BareKestrel", "bench"),
        new Dictionary<string, string> { ["BareKestrel__OtlpSink"] = "true" }, Path.Combine(logs, "otlp-sink.log"), ServiceProcess.FreePort());
    services.Add(otlpSink);
    await otlpSink.WaitReadyAsync("/v1/received", TimeSpan.FromSeconds(60));
    serviceLog["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlpSink.BaseUri.ToString().TrimEnd('/');
    serviceLog["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/protobuf";
}
using var telemetry = otlpSink is null ? null : new OtlpSinkClient(otlpSink.BaseUri);

var emulator = ServiceProcess.StartDotnet("emulator", Dll("PortAzure.AzureDevOpsEmulator", ""),
    new Dictionary<string, string>
    {
        ["Emulator__Secret"] = Secret,
        // Every request: the lost / duplicated verdicts count them all (a drain alone is 100,000).
        ["Emulator__MaxRecorded"] = "0",
        // The stand-in for Azure is not under test: its per-request log line would only steal CPU.
        ["Logging__LogLevel__Default"] = "Warning",
    }, Path.Combine(logs, "emulator.log"), ServiceProcess.FreePort());
services.Add(emulator);

var ingress = ServiceProcess.StartDotnet("ingress", Dll("PortAzure.Ingress", ""),
    new Dictionary<string, string>(serviceLog)
    {
        ["OTEL_SERVICE_NAME"] = "ingress",
        ["ConnectionStrings__redis"] = redisConnection,
        ["Port__ClientSecret"] = Secret,
        ["AzureDevOps__BaseUrl"] = emulator.BaseUri.ToString(),
        // One load generator on one address: the per-client rate limit would measure itself, not the relay.
        ["Ingress__RateLimit__Enabled"] = "false",
    }, Path.Combine(logs, "ingress.log"), ServiceProcess.FreePort());
services.Add(ingress);

// The baseline runs under the same runtime knobs (--service-env), so that a what-if ratio compares like with like.
var bare = ServiceProcess.StartDotnet("bare-kestrel", Dll("PortAzure.BareKestrel", "bench"),
    new Dictionary<string, string>(settings.ServiceEnv), Path.Combine(logs, "bare-kestrel.log"), ServiceProcess.FreePort());
services.Add(bare);
// The second baseline: the same Kestrel, plus one XADD of the body before the 202 (the least a service that
// stores each call before answering must do), so that the Ingress's ratio to it shows the relay's own overhead.
var bareXadd = ServiceProcess.StartDotnet("kestrel-xadd", Dll("PortAzure.BareKestrel", "bench"),
    new Dictionary<string, string>(settings.ServiceEnv) { ["BareKestrel__Redis"] = redisConnection },
    Path.Combine(logs, "kestrel-xadd.log"), ServiceProcess.FreePort());
services.Add(bareXadd);

await emulator.WaitReadyAsync("/alive", TimeSpan.FromSeconds(60));
await ingress.WaitReadyAsync("/alive", TimeSpan.FromSeconds(60));
await bare.WaitReadyAsync("/", TimeSpan.FromSeconds(60));
await bareXadd.WaitReadyAsync("/", TimeSpan.FromSeconds(60));
using var emulatorClient = new EmulatorClient(emulator.BaseUri);

var dispatcherNumber = 0;
List<ServiceProcess> StartDispatchers(int count, string scenario) =>
    [.. Enumerable.Range(0, count).Select(_ =>
    {
        var n = ++dispatcherNumber;
        var d = ServiceProcess.StartDotnet($"dispatcher-{n}", Dll("PortAzure.Dispatcher", ""),
            new Dictionary<string, string>(serviceLog)
            {
                ["OTEL_SERVICE_NAME"] = "dispatcher",
                ["ConnectionStrings__redis"] = redisConnection,
                ["Port__ClientSecret"] = Secret,
                ["AzureDevOps__BaseUrl"] = emulator.BaseUri.ToString(),
                ["Dispatcher__MaxConcurrency"] = settings.DispatcherConcurrency.ToString(CultureInfo.InvariantCulture),
                ["Dispatcher__ConsumerName"] = $"bench-{scenario}-{n}",
            }, Path.Combine(logs, $"dispatcher-{n}-{scenario}.log"), ServiceProcess.FreePort());
        services.Add(d);
        return d;
    })];

void StopDispatchers(List<ServiceProcess> dispatchers)
{
    foreach (var d in dispatchers)
    {
        dispatcherPeakRss = Math.Max(dispatcherPeakRss, d.PeakRssMb());
        d.Stop(TimeSpan.FromSeconds(30));
        dispatcherPeakRss = Math.Max(dispatcherPeakRss, d.PeakRssMb());
    }
}

// Waits until the emulator holds `expected` records (or nothing moves for the stall time), then lets
// stragglers (duplicates) arrive before the records are read.
async Task<(double Seconds, double FirstAfter, double PeakWindowRate)> WaitDeliveredAsync(int expected, long startTicks)
{
    var samples = new List<(double T, int Count)>();
    double? first = null;
    var lastProgress = Stopwatch.GetTimestamp();
    var last = -1;
    while (true)
    {
        var count = await emulatorClient.CountAsync();
        var t = Stopwatch.GetElapsedTime(startTicks).TotalSeconds;
        samples.Add((t, count));
        if (count > 0 && first is null)
        {
            first = t;
        }
        if (count != last)
        {
            last = count;
            lastProgress = Stopwatch.GetTimestamp();
        }
        if (count >= expected)
        {
            break;
        }
        if (Stopwatch.GetElapsedTime(lastProgress) > settings.StallTimeout)
        {
            Console.WriteLine($"  no delivery progress for {settings.StallTimeout.TotalSeconds} s at {count}/{expected}");
            break;
        }
        await Task.Delay(50);
    }
    var done = samples[^1].T;
    var peak = 0.0;
    for (int i = 0, j = 0; i < samples.Count; i++)
    {
        while (j < samples.Count && samples[j].T - samples[i].T < 1.0)
        {
            j++;
        }
        if (j < samples.Count)
        {
            peak = Math.Max(peak, (samples[j].Count - samples[i].Count) / (samples[j].T - samples[i].T));
        }
    }
    return (done, first ?? done, peak);
}

// Once the relay is quiet (below), the records are taken from the emulator and checked: each run accepted in this
// scenario delivered once, and none of an earlier scenario's delivered again. A quiet relay cannot deliver anything
// more, so nothing can arrive after its check; what still does is caught by the next one, or by the last (FinalCheckAsync).
async Task<(Verification Verification, List<Delivered> Records)> VerifyAsync(string scenario, IReadOnlyCollection<string> accepted)
{
    var quiet = await WaitQuietAsync(settings.Smoke ? TimeSpan.FromSeconds(15) : TimeSpan.FromSeconds(60));
    var records = await emulatorClient.TakeRecordsAsync();
    var verification = Verification.Check(scenario, accepted, records, everAccepted, quiet);
    everAccepted.UnionWith(accepted);
    Console.WriteLine($"  {verification}");
    verifications.Add(verification);
    return (verification, records);
}

// Quiet: no entry in the stream, none pending in the group, no retry scheduled. An entry is acknowledged (and deleted)
// only after Azure's answer, which the emulator records before it answers, so a quiet relay's deliveries are all on record.
async Task<bool> WaitQuietAsync(TimeSpan limit)
{
    var since = Stopwatch.GetTimestamp();
    while (true)
    {
        var length = await db.StreamLengthAsync(RedisKeys.Stream);
        var pending = (await db.StreamPendingAsync(RedisKeys.Stream, RedisKeys.ConsumerGroup)).PendingMessageCount;
        var retries = await db.SortedSetLengthAsync(RedisKeys.RetrySchedule);
        if (length == 0 && pending == 0 && retries == 0)
        {
            return true;
        }
        if (Stopwatch.GetElapsedTime(since) > limit)
        {
            Console.WriteLine($"  relay not quiet after {limit.TotalSeconds:0} s: stream length {length}, pending {pending}, retries {retries}");
            return false;
        }
        await Task.Delay(100);
    }
}

// After the last scenario, with every Dispatcher stopped: any record left is a delivery no scenario's check saw.
async Task<bool> FinalCheckAsync()
{
    var left = await emulatorClient.TakeRecordsAsync();
    if (left.Count == 0)
    {
        return true;
    }
    var late = left.Count(r => r.RunId is not null && everAccepted.Contains(r.RunId));
    Console.WriteLine($"FAILED: {left.Count} deliveries after the last check ({late} of runs already delivered and checked)");
    return false;
}

async Task<(double Rate, double RateWithStartup, double Peak, double Seconds)> DrainAsync(string scenario, int dispatcherCount, List<string> accepted)
{
    var expected = accepted.Count;
    var commandsBefore = await CommandStatsAsync();
    var start = Stopwatch.GetTimestamp();
    var dispatchers = StartDispatchers(dispatcherCount, scenario);
    var (seconds, first, peak) = await WaitDeliveredAsync(expected, start);
    var rate = expected / Math.Max(1e-9, seconds - first);
    Console.WriteLine($"  {scenario}: {expected} deliveries in {seconds:0.0} s from process start ({seconds - first:0.0} s from the first delivery): {rate:0} deliveries/s, peak 1-s window {peak:0}/s");
    var commandsAfter = await CommandStatsAsync();
    Console.WriteLine("  redis commands per delivery: " + string.Join(", ", commandsAfter
        .Select(kv => (kv.Key, Calls: kv.Value - commandsBefore.GetValueOrDefault(kv.Key)))
        .Where(c => c.Calls > 0).OrderByDescending(c => c.Calls)
        .Select(c => $"{c.Key} {c.Calls / (double)Math.Max(1, expected):0.00}")));
    await VerifyAsync(scenario, accepted);
    StopDispatchers(dispatchers);
    return (rate, expected / seconds, peak, seconds);
}

// INFO commandstats: calls per command, to count Redis round trips per delivery.
async Task<Dictionary<string, long>> CommandStatsAsync()
{
    var text = (string?)await db.ExecuteAsync("INFO", "commandstats") ?? "";
    var stats = new Dictionary<string, long>(StringComparer.Ordinal);
    foreach (var line in text.Split('\n'))
    {
        if (line.StartsWith("cmdstat_", StringComparison.Ordinal) && line.IndexOf(":calls=", StringComparison.Ordinal) is var at and > 0)
        {
            var calls = line[(at + 7)..].Split(',')[0];
            stats[line[8..at]] = long.Parse(calls, CultureInfo.InvariantCulture);
        }
    }
    return stats;
}

// ---------------------------------------------------------------- baselines
Console.WriteLine("baseline: redis-benchmark XADD");
var payload = new string('x', sample.Length);
var xaddPlain = RedisBench.Run(redisPort, settings.RedisBenchRequests, settings.Connections, 1, payload);
var xaddPipelined = RedisBench.Run(redisPort, settings.RedisBenchRequests * 4, settings.Connections, 16, payload);
await db.KeyDeleteAsync("bench");
Console.WriteLine($"  XADD -c {settings.Connections}: {xaddPlain}; with -P 16: {xaddPipelined}");

async Task<Baseline> MeasureBaselineAsync(string name, string tag, ServiceProcess server)
{
    Console.WriteLine($"baseline: {name}, closed loop");
    using var client = new LoadClient(server.BaseUri, Org, Webhook, Secret, settings.Connections, sample);
    // Every server gets the same untimed warm-up, so that JIT tiering and pool growth are behind it when
    // the measured phase starts; CPU is counted over the measured phase only.
    var warm = await LoadModels.ClosedAsync(tag + "-warm", client, settings.Connections, 20_000_000,
        settings.WarmupDuration, 0, i => RunIdFor(tag + "warm", i));
    Console.WriteLine($"  {name} warm-up: {warm.Issued} requests in {warm.ElapsedSeconds:0.0} s, slowest answer {warm.Latency().Max:0} ms");
    // The storing baseline's stream grows by ~30,000 bodies a second; UNLINK frees them off Redis's main thread.
    await db.ExecuteAsync("UNLINK", "bench:store");
    var cpu = server.CpuSeconds();
    var redisCpu = redisServer.CpuSeconds();
    var result = await LoadModels.ClosedAsync(tag, client, settings.Connections, 20_000_000,
        settings.BaselineDuration, 0, i => RunIdFor(tag, i));
    var baseline = new Baseline(result, warm, (server.CpuSeconds() - cpu) / result.Issued * 1e6, (redisServer.CpuSeconds() - redisCpu) / result.Issued * 1e6);
    Console.WriteLine($"  {name}: {result.RatePerSecond:0} req/s over {result.Issued} requests ({result.StatusSummary()}), {result.Latency()}, server CPU {baseline.CpuPerRequest:0} us/request, redis {baseline.RedisCpuPerRequest:0} us/request");
    server.Stop(TimeSpan.FromSeconds(10));
    await db.ExecuteAsync("UNLINK", "bench:store");
    return baseline;
}

var bareBaseline = await MeasureBaselineAsync("bare Kestrel", "bare", bare);
var xaddBaseline = await MeasureBaselineAsync("Kestrel + XADD", "xadd", bareXadd);

// ---------------------------------------------------------------- Ingress, closed loop, no Dispatcher
// The open model's client (and the end-to-end phases'): a bounded pool, as wrk2 holds a fixed set of connections.
// Requests that find every connection busy wait in the client, and that wait counts in their latency (it runs
// from the due time). With 4,096 a stall made it open hundreds of connections at once (docs/benchmarks.md, runs i-m).
using var ingressClient = new LoadClient(ingress.BaseUri, Org, Webhook, Secret, settings.OpenConnections, sample);
Console.WriteLine($"ingress: closed loop, {settings.Connections} connections, {settings.Backlog} runs, Dispatchers stopped");
LoadResult ingressMax, ingressWarm;
Dictionary<string, OtlpSinkClient.Counts>? telemetryBefore;
double ingressCpuPerReq, redisCpuPerReq;
string? replicaLine = null;
using (var closedClient = new LoadClient(ingress.BaseUri, Org, Webhook, Secret, settings.Connections, sample))
{
    ingressWarm = await LoadModels.ClosedAsync("ingress-warm", closedClient, settings.Connections, 20_000_000,
        settings.WarmupDuration, 0, i => RunIdFor("iwarm", i));
    Console.WriteLine($"  ingress warm-up: {ingressWarm.Issued} runs in {ingressWarm.ElapsedSeconds:0.0} s ({ingressWarm.StatusSummary()}), slowest answer (cold start) {ingressWarm.Latency().Max:0} ms");
    // The warm-up runs were accepted: they are delivered and checked like any others, and drained now so
    // that the measured backlog is exactly --backlog runs.
    await DrainAsync("ingress-warm", 1, ingressWarm.AcceptedRunIds().ToList());
    telemetryBefore = telemetry is null ? null : await telemetry.SettledAsync();
    var ingressCpu = ingress.CpuSeconds();
    var redisCpu = redisServer.CpuSeconds();
    var replicaCpu = replica?.CpuSeconds() ?? 0;
    var waitsBefore = (await CommandStatsAsync()).GetValueOrDefault("wait");
    ingressMax = await LoadModels.ClosedAsync("ingress-max", closedClient, settings.Connections, settings.Backlog, null, 0, i => RunIdFor("imax", i));
    ingressCpuPerReq = (ingress.CpuSeconds() - ingressCpu) / ingressMax.Issued * 1e6;
    redisCpuPerReq = (redisServer.CpuSeconds() - redisCpu) / ingressMax.Issued * 1e6;
    if (replica is not null)
    {
        // Ingress:WaitForReplicas sends one WAIT for the runs answered while the one before was out.
        var waits = (await CommandStatsAsync()).GetValueOrDefault("wait") - waitsBefore;
        replicaLine = $"Redis replica {(replica.CpuSeconds() - replicaCpu) / ingressMax.Issued * 1e6:0} us CPU/run; {waits} WAITs" +
            (waits > 0 ? $" ({ingressMax.Issued / (double)waits:0.0} runs per WAIT)" : "");
        Console.WriteLine("  " + replicaLine);
    }
}
Console.WriteLine($"  ingress max: {ingressMax.AcceptedPerSecond:0} accepted runs/s ({ingressMax.StatusSummary()}), {ingressMax.Latency()}, CPU per run: ingress {ingressCpuPerReq:0} us, redis {redisCpuPerReq:0} us; Ingress peak RSS so far {ingress.PeakRssMb():0} MB");
var backlogAccepted = ingressMax.AcceptedRunIds().ToList();

Console.WriteLine($"drain: {backlogAccepted.Count} queued runs, one Dispatcher (MaxConcurrency {settings.DispatcherConcurrency})");
var drain1 = await DrainAsync("drain1", 1, backlogAccepted);
// Once the sink has been quiet for longer than the SDK's export delay (and the stopped Dispatcher flushed on its
// way out), what it has not received was dropped: the batch processor's queue holds 2,048 items by default.
string? telemetryLine = null;
if (telemetry is not null)
{
    var after = await telemetry.SettledAsync();
    OtlpSinkClient.Counts Delta(string service) => after.GetValueOrDefault(service, new()) - telemetryBefore!.GetValueOrDefault(service, new());
    var (ingressSent, dispatcherSent) = (Delta("ingress"), Delta("dispatcher"));
    telemetryLine = $"OTLP export: the Ingress sent {ingressSent.Spans} spans ({ingressSent.Spans / (double)ingressMax.Issued:0.00} per run; 2 each if none was dropped), " +
        $"{ingressSent.LogRecords} log records, {ingressSent.Bytes / 1e6:0.0} MB in {ingressSent.Requests} exports for {ingressMax.Issued} runs; " +
        $"the Dispatcher {dispatcherSent.Spans} spans ({dispatcherSent.Spans / (double)backlogAccepted.Count:0.00} per delivery), {dispatcherSent.LogRecords} log records";
    Console.WriteLine("  " + telemetryLine);
}

if (settings.IngressOnly)
{
    // Profiling runs: baselines, Ingress max and the drain that checks it; nothing else.
    var ingressOnlyRss = ingress.PeakRssMb();
    var ingressOnlyFinal = await FinalCheckAsync();
    foreach (var service in services)
    {
        service.Dispose();
    }
    report.Line("## Ingress only");
    report.Line();
    report.Line($"- bare Kestrel {bareBaseline.Result.RatePerSecond:0} req/s ({bareBaseline.CpuPerRequest:0} us CPU/request); Ingress {ingressMax.AcceptedPerSecond:0} runs/s = {ingressMax.AcceptedPerSecond / bareBaseline.Result.RatePerSecond:P0} " +
        $"({ingressCpuPerReq:0} us Ingress CPU/run, {redisCpuPerReq:0} us redis CPU/run); {ingressMax.Latency()}");
    report.Line($"- Kestrel + XADD {xaddBaseline.Result.RatePerSecond:0} req/s ({xaddBaseline.CpuPerRequest:0} us CPU/request, {xaddBaseline.RedisCpuPerRequest:0} us redis CPU/request); " +
        $"Ingress = {ingressMax.AcceptedPerSecond / xaddBaseline.Result.RatePerSecond:P0} of it");
    if (replicaLine is not null)
    {
        report.Line("- " + replicaLine);
    }
    report.Line($"- drain, one Dispatcher: {drain1.Rate:0} deliveries/s; peak RSS Ingress {ingressOnlyRss:0} MB, Dispatcher {dispatcherPeakRss:0} MB");
    if (telemetryLine is not null)
    {
        report.Line("- " + telemetryLine);
    }
    report.Line($"- {string.Join("; ", verifications)}");
    report.Write();
    return verifications.All(v => v.Ok) && ingressOnlyFinal ? 0 : 1;
}

// ---------------------------------------------------------------- Ingress, open model
var openResults = new List<LoadResult>();
var openAccepted = new List<string>();
foreach (var fraction in new[] { 0.25, 0.50, 0.75 })
{
    var rate = Math.Max(10, ingressMax.AcceptedPerSecond * fraction);
    var name = $"open{(int)(fraction * 100)}";
    var result = await LoadModels.OpenAsync(name, ingressClient, rate, settings.OpenDuration, i => RunIdFor(name, i));
    Console.WriteLine($"  ingress open model at {fraction:P0} of max ({rate:0}/s, {result.Issued} runs): {result.Latency()} ({result.StatusSummary()}); Ingress peak RSS so far {ingress.PeakRssMb():0} MB");
    openResults.Add(result);
    openAccepted.AddRange(result.AcceptedRunIds());
}
var drainOpen = await DrainAsync("drain-open", 1, openAccepted);

// ---------------------------------------------------------------- end to end
Console.WriteLine("end to end: one Dispatcher running, open model");
var e2eDispatchers = StartDispatchers(1, "e2e");
await e2eDispatchers[0].WaitReadyAsync("/alive", TimeSpan.FromSeconds(60));
var e2eResults = new List<(double Rate, LoadResult Load, Percentiles Relay, Verification Verification)>();
{
    // Warm-up: JIT and connection pools of a fresh Dispatcher; checked like the rest, not reported.
    var warm = await LoadModels.OpenAsync("e2e-warm", ingressClient, 200, settings.Smoke ? TimeSpan.FromSeconds(0.5) : TimeSpan.FromSeconds(3), i => RunIdFor("e2ewarm", i));
    var warmAccepted = warm.AcceptedRunIds().ToList();
    await WaitDeliveredAsync(warmAccepted.Count, Stopwatch.GetTimestamp());
    await VerifyAsync("e2e-warm", warmAccepted);
}
foreach (var rate in settings.E2ERates)
{
    var name = $"e2e{rate}";
    var load = await LoadModels.OpenAsync(name, ingressClient, rate, settings.E2EDuration, i => RunIdFor(name, i));
    var accepted = load.AcceptedRunIds().ToList();
    await WaitDeliveredAsync(accepted.Count, Stopwatch.GetTimestamp());
    var (verification, records) = await VerifyAsync(name, accepted);
    var sentAt = new Dictionary<string, DateTimeOffset>(StringComparer.Ordinal);
    for (long i = 0; i < load.Issued; i++)
    {
        sentAt[load.RunId(i)] = load.SentAt[i];
    }
    var relay = Percentiles.Of(records
        .Where(r => r.RunId is not null && sentAt.ContainsKey(r.RunId))
        .Select(r => (r.ReceivedAt - sentAt[r.RunId!]).TotalMilliseconds));
    Console.WriteLine($"  {rate} runs/s: relay-added latency (scheduled send -> emulator receivedAt) {relay}; Ingress answer {load.Latency()} ({load.StatusSummary()}); Ingress peak RSS so far {ingress.PeakRssMb():0} MB");
    e2eResults.Add((rate, load, relay, verification));
}
StopDispatchers(e2eDispatchers);

// ---------------------------------------------------------------- three Dispatchers
Console.WriteLine($"drain: {settings.Backlog3} queued runs, three Dispatchers");
LoadResult enqueue3;
using (var closedClient = new LoadClient(ingress.BaseUri, Org, Webhook, Secret, settings.Connections, sample))
{
    enqueue3 = await LoadModels.ClosedAsync("enqueue3", closedClient, settings.Connections, settings.Backlog3, null, settings.WarmupRequests, i => RunIdFor("d3", i));
}
Console.WriteLine($"  enqueued at {enqueue3.RatePerSecond:0} runs/s ({enqueue3.StatusSummary()})");
var drain3 = await DrainAsync("drain3", 3, enqueue3.AcceptedRunIds().ToList());

var ingressPeakRss = ingress.PeakRssMb();
var emulatorPeakRss = emulator.PeakRssMb();
var redisInfo = await db.ExecuteAsync("INFO", "memory");
var redisPeak = ((string?)redisInfo ?? "").Split('\n').FirstOrDefault(l => l.StartsWith("used_memory_peak_human:", StringComparison.Ordinal))?.Split(':')[1].Trim();
var finalOk = await FinalCheckAsync();

foreach (var service in services)
{
    service.Dispose();
}

// ---------------------------------------------------------------- report
report.Results(settings, xaddPlain, xaddPipelined, bareBaseline, xaddBaseline, ingressMax, ingressCpuPerReq, redisCpuPerReq, drain1, openResults, drainOpen,
    e2eResults.Select(e => (e.Rate, e.Load, e.Relay)).ToList(), enqueue3, drain3, ingressPeakRss, dispatcherPeakRss, emulatorPeakRss, redisPeak, verifications);
report.Line();
if (telemetryLine is not null)
{
    report.Line("- " + telemetryLine);
}
report.Line($"- cold start: slowest answer of the untimed warm-up, bare Kestrel {bareBaseline.Warm.Latency().Max:0} ms, Ingress {ingressWarm.Latency().Max:0} ms");
report.Write();

var failed = verifications.Where(v => !v.Ok).ToList();
Console.WriteLine();
Console.WriteLine($"results: {Path.Combine(outDir, "results.md")}");
if (failed.Count > 0 || !finalOk)
{
    Console.WriteLine($"FAILED: {failed.Count} scenario(s) lost or duplicated runs, or left the relay busy: {string.Join(", ", failed.Select(f => f.Scenario))}" +
        (finalOk ? "" : "; deliveries after the last check"));
    return 1;
}
Console.WriteLine($"OK: {verifications.Count} scenarios, no run lost, none delivered twice");
return 0;

internal sealed record Baseline(LoadResult Result, LoadResult Warm, double CpuPerRequest, double RedisCpuPerRequest);

internal sealed class Settings
{
    public bool Smoke { get; private set; }
    public bool IngressOnly { get; private set; }
    public bool Otlp { get; private set; }
    public string? OutDir { get; private set; }
    public string? ServiceLogLevel { get; private set; }
    public string? RedisCpus { get; private set; }
    public bool Replica { get; private set; }
    public Dictionary<string, string> ServiceEnv { get; } = [];
    public int Connections { get; private set; } = 32;
    public int OpenConnections { get; private set; } = 256;
    public int DispatcherConcurrency { get; private set; } = 128;
    public int Backlog { get; private set; } = 100_000;
    public int Backlog3 { get; private set; } = 100_000;
    public long WarmupRequests { get; private set; } = 5_000;
    public TimeSpan WarmupDuration { get; private set; } = TimeSpan.FromSeconds(10);
    public int RedisBenchRequests { get; private set; } = 100_000;
    public TimeSpan BaselineDuration { get; private set; } = TimeSpan.FromSeconds(12);
    public TimeSpan OpenDuration { get; private set; } = TimeSpan.FromSeconds(10);
    public TimeSpan E2EDuration { get; private set; } = TimeSpan.FromSeconds(15);
    public TimeSpan StallTimeout { get; private set; } = TimeSpan.FromSeconds(60);
    public int[] E2ERates { get; private set; } = [100, 500, 1000];

    public static Settings Parse(string[] args)
    {
        var s = new Settings();
        for (var i = 0; i < args.Length; i++)
        {
            string Next() => i + 1 < args.Length ? args[++i] : throw new ArgumentException($"{args[i]} needs a value");
            switch (args[i])
            {
                case "--smoke":
                    s.Smoke = true;
                    s.Backlog = 400;
                    s.Backlog3 = 300;
                    s.WarmupRequests = 50;
                    s.WarmupDuration = TimeSpan.FromSeconds(0.5);
                    s.RedisBenchRequests = 2_000;
                    s.BaselineDuration = TimeSpan.FromSeconds(1);
                    s.OpenDuration = TimeSpan.FromSeconds(0.5);
                    s.E2EDuration = TimeSpan.FromSeconds(0.5);
                    s.StallTimeout = TimeSpan.FromSeconds(30);
                    break;
                case "--ingress-only": s.IngressOnly = true; break;
                case "--otlp": s.Otlp = true; break;
                case "--replica": s.Replica = true; break;
                case "--warmup-seconds": s.WarmupDuration = TimeSpan.FromSeconds(double.Parse(Next(), CultureInfo.InvariantCulture)); break;
                case "--out": s.OutDir = Path.GetFullPath(Next()); break;
                case "--service-log-level": s.ServiceLogLevel = Next(); break;
                case "--redis-cpus": s.RedisCpus = Next(); break;
                case "--service-env":
                    var pair = Next().Split('=', 2);
                    s.ServiceEnv[pair[0]] = pair.Length > 1 ? pair[1] : "";
                    break;
                case "--connections": s.Connections = int.Parse(Next(), CultureInfo.InvariantCulture); break;
                case "--open-connections": s.OpenConnections = int.Parse(Next(), CultureInfo.InvariantCulture); break;
                case "--dispatcher-concurrency": s.DispatcherConcurrency = int.Parse(Next(), CultureInfo.InvariantCulture); break;
                case "--backlog": s.Backlog = int.Parse(Next(), CultureInfo.InvariantCulture); break;
                case "--backlog3": s.Backlog3 = int.Parse(Next(), CultureInfo.InvariantCulture); break;
                case "--open-seconds": s.OpenDuration = TimeSpan.FromSeconds(double.Parse(Next(), CultureInfo.InvariantCulture)); break;
                case "--e2e-seconds": s.E2EDuration = TimeSpan.FromSeconds(double.Parse(Next(), CultureInfo.InvariantCulture)); break;
                case "--e2e-rates": s.E2ERates = [.. Next().Split(',').Select(r => int.Parse(r, CultureInfo.InvariantCulture))]; break;
                case "--help" or "-h":
                    Console.WriteLine("bench/run.sh [--smoke] [--ingress-only] [--otlp] [--out DIR] [--service-log-level Warning] [--service-env KEY=VALUE]... [--redis-cpus 1] [--replica] [--warmup-seconds 10] [--connections 32] [--open-connections 256] [--dispatcher-concurrency 128] " +
                        "[--backlog 100000] [--backlog3 100000] [--open-seconds 10] [--e2e-seconds 15] [--e2e-rates 100,500,1000]");
                    Environment.Exit(0);
                    break;
                default: throw new ArgumentException($"unknown option {args[i]} (try --help)");
            }
        }
        return s;
    }

    /// <summary>A CPU list as taskset takes it ("1", "0,2", "2-3") as an affinity mask.</summary>
    public static long CpuMask(string list)
    {
        long mask = 0;
        foreach (var part in list.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            var range = part.Split('-', 2);
            var first = int.Parse(range[0], CultureInfo.InvariantCulture);
            var last = range.Length == 2 ? int.Parse(range[1], CultureInfo.InvariantCulture) : first;
            for (var cpu = first; cpu <= last; cpu++)
            {
                mask |= 1L << cpu;
            }
        }
        return mask;
    }

    public static string FindRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "PortAzure.Aspire.sln")))
            {
                return dir.FullName;
            }
        }
        throw new InvalidOperationException("PortAzure.Aspire.sln not found above " + AppContext.BaseDirectory);
    }
}

internal static class RedisBench
{
    public sealed record Result(double Rps, double P50, double P99)
    {
        public override string ToString() => $"{Rps:0} XADD/s (p50 {P50:0.000} ms, p99 {P99:0.000} ms)";
    }

    /// <summary><c>redis-benchmark -c C -n N [-P P] --csv XADD bench * body &lt;payload&gt;</c>.</summary>
    public static Result Run(int port, int requests, int clients, int pipeline, string payload)
    {
        var start = new ProcessStartInfo("redis-benchmark") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { "-h", "127.0.0.1", "-p", port.ToString(CultureInfo.InvariantCulture), "-c", clients.ToString(CultureInfo.InvariantCulture),
                     "-n", requests.ToString(CultureInfo.InvariantCulture), "-P", pipeline.ToString(CultureInfo.InvariantCulture), "--csv", "XADD", "bench", "*", "body", payload })
        {
            start.ArgumentList.Add(a);
        }
        using var process = Process.Start(start)!;
        var output = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        var line = output.Split('\n').LastOrDefault(l => l.StartsWith("\"XADD", StringComparison.Ordinal))
            ?? throw new InvalidOperationException("redis-benchmark printed no result: " + output + process.StandardError.ReadToEnd());
        var fields = line.Split("\",\"").Select(f => f.Trim('"', '\r')).ToArray();
        return new Result(double.Parse(fields[1], CultureInfo.InvariantCulture), double.Parse(fields[4], CultureInfo.InvariantCulture), double.Parse(fields[6], CultureInfo.InvariantCulture));
    }
}
