using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Http.Json;
using System.Net.Sockets;
using System.Text.Json;

namespace PortAzure.LoadBench;

/// <summary>One service as a real OS process: <c>dotnet X.dll</c> (or redis-server), output to a log file.</summary>
internal sealed class ServiceProcess : IDisposable
{
    private readonly Process _process;
    private long _peakRssKb;

    private ServiceProcess(string name, Process process, int port)
    {
        Name = name;
        _process = process;
        Port = port;
    }

    public string Name { get; }
    public int Port { get; }
    public int Pid => _process.Id;
    public Uri BaseUri => new($"http://127.0.0.1:{Port}/");

    /// <summary>Starts <paramref name="command"/> through <c>sh -c 'exec ...'</c>, so the pid is the program's own.</summary>
    public static ServiceProcess Start(string name, string command, IEnumerable<string> args, IDictionary<string, string> env, string logFile, int port)
    {
        // The working directory is the program's own: ASP.NET Core takes it as the content root, and
        // reads appsettings.json (log levels included) from there.
        var workingDirectory = args.FirstOrDefault(a => a.EndsWith(".dll", StringComparison.Ordinal)) is { } dll
            ? Path.GetDirectoryName(dll)!
            : Path.GetDirectoryName(logFile)!;
        var start = new ProcessStartInfo("/bin/sh") { UseShellExecute = false, WorkingDirectory = workingDirectory };
        start.ArgumentList.Add("-c");
        start.ArgumentList.Add("exec \"$@\" >\"$LOADBENCH_LOG\" 2>&1");
        start.ArgumentList.Add("sh");
        start.ArgumentList.Add(command);
        foreach (var arg in args)
        {
            start.ArgumentList.Add(arg);
        }
        start.Environment["LOADBENCH_LOG"] = logFile;
        foreach (var (key, value) in env)
        {
            start.Environment[key] = value;
        }
        var process = Process.Start(start) ?? throw new InvalidOperationException($"{name} did not start");
        return new ServiceProcess(name, process, port);
    }

    public static ServiceProcess StartDotnet(string name, string dll, IDictionary<string, string> env, string logFile, int port)
    {
        if (!File.Exists(dll))
        {
            throw new FileNotFoundException($"Build {name} in Release first (bench/run.sh does).", dll);
        }
        var all = new Dictionary<string, string>(env)
        {
            ["ASPNETCORE_URLS"] = $"http://127.0.0.1:{port}",
            ["DOTNET_CLI_TELEMETRY_OPTOUT"] = "1",
        };
        return Start(name, "dotnet", [dll], all, logFile, port);
    }

    /// <summary>Waits until the port accepts connections and, for HTTP services, until <paramref name="path"/> answers.</summary>
    public async Task WaitReadyAsync(string? path, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(2) };
        while (DateTime.UtcNow < deadline)
        {
            if (_process.HasExited)
            {
                throw new InvalidOperationException($"{Name} exited with {_process.ExitCode} while starting; see its log.");
            }
            try
            {
                if (path is null)
                {
                    using var tcp = new TcpClient();
                    await tcp.ConnectAsync(IPAddress.Loopback, Port);
                    return;
                }
                using var response = await http.GetAsync(new Uri(BaseUri, path));
                return;
            }
            catch (Exception ex) when (ex is SocketException or HttpRequestException or TaskCanceledException)
            {
                await Task.Delay(100);
            }
        }
        throw new TimeoutException($"{Name} did not become ready within {timeout.TotalSeconds} s");
    }

    /// <summary>VmHWM (peak resident set) in MiB as the kernel keeps it for the process.</summary>
    public double PeakRssMb()
    {
        try
        {
            foreach (var line in File.ReadLines($"/proc/{Pid}/status"))
            {
                if (line.StartsWith("VmHWM:", StringComparison.Ordinal))
                {
                    var kb = long.Parse(line["VmHWM:".Length..].Trim().Split(' ')[0], CultureInfo.InvariantCulture);
                    _peakRssKb = Math.Max(_peakRssKb, kb);
                }
            }
        }
        catch (IOException)
        {
        }
        return _peakRssKb / 1024.0;
    }

    private double _cpuSeconds;

    /// <summary>User + system CPU time the process has used so far (from /proc/PID/stat, 100 ticks/s).</summary>
    public double CpuSeconds()
    {
        try
        {
            var stat = File.ReadAllText($"/proc/{Pid}/stat");
            var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            _cpuSeconds = (long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture)) / 100.0;
        }
        catch (IOException)
        {
        }
        return _cpuSeconds;
    }

    /// <summary>SIGTERM (graceful shutdown), then SIGKILL after <paramref name="grace"/>.</summary>
    public void Stop(TimeSpan grace)
    {
        if (_process.HasExited)
        {
            return;
        }
        PeakRssMb();
        using (var kill = Process.Start("kill", ["-TERM", Pid.ToString(CultureInfo.InvariantCulture)]))
        {
            kill?.WaitForExit();
        }
        if (!_process.WaitForExit(grace))
        {
            _process.Kill();
            _process.WaitForExit();
        }
    }

    public void Dispose()
    {
        Stop(TimeSpan.FromSeconds(5));
        _process.Dispose();
    }

    /// <summary>On an abnormal exit of the harness: kills the process if it still runs; never throws.</summary>
    public void KillIfRunning()
    {
        try
        {
            if (!_process.HasExited)
            {
                _process.Kill(entireProcessTree: true);
            }
        }
        catch (Exception ex) when (ex is InvalidOperationException or System.ComponentModel.Win32Exception)
        {
            // Disposed already, or gone meanwhile.
        }
    }

    public static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}

/// <summary>The emulator's record endpoints.</summary>
internal sealed class EmulatorClient(Uri baseUri) : IDisposable
{
    private static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web);
    private readonly HttpClient _http = new() { BaseAddress = baseUri, Timeout = TimeSpan.FromMinutes(5) };

    public async Task<int> CountAsync()
    {
        using var doc = JsonDocument.Parse(await _http.GetStringAsync(new Uri("_emulator/requests/count", UriKind.Relative)));
        return doc.RootElement.GetProperty("count").GetInt32();
    }

    /// <summary>
    /// Every recorded request, reduced to what the checks need, and removed from the emulator in the same step (a read
    /// and then a clear would drop unseen whatever arrived between them); streamed (100k records are ~250 MB of JSON).
    /// </summary>
    public async Task<List<Delivered>> TakeRecordsAsync()
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, new Uri("_emulator/requests/take", UriKind.Relative));
        using var response = await _http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        response.EnsureSuccessStatusCode();
        await using var stream = await response.Content.ReadAsStreamAsync();
        var list = new List<Delivered>();
        await foreach (var record in JsonSerializer.DeserializeAsyncEnumerable<EmulatorRecord>(stream, Json))
        {
            if (record is null)
            {
                continue;
            }
            string? runId = null;
            foreach (var (name, values) in record.Headers)
            {
                if (string.Equals(name, "X-Port-Run-Id", StringComparison.OrdinalIgnoreCase) && values.Length > 0)
                {
                    runId = values[0];
                }
            }
            list.Add(new Delivered(runId, record.ReceivedAt, record.StatusCode, record.SignatureValid));
        }
        return list;
    }

    public void Dispose() => _http.Dispose();

    private sealed record EmulatorRecord(DateTimeOffset ReceivedAt, Dictionary<string, string?[]> Headers, int StatusCode, bool SignatureValid);
}

internal sealed record Delivered(string? RunId, DateTimeOffset ReceivedAt, int StatusCode, bool SignatureValid);

/// <summary>Accepted run ids against what the emulator recorded.</summary>
/// <param name="Late">Records of runs accepted, and found delivered, in an earlier scenario: each a second delivery.</param>
/// <param name="Quiescent">
/// Nothing left that could still deliver a run (no pending entry, no scheduled retry, an empty stream) when the records
/// were taken: only then can no second delivery of these runs arrive after the check.
/// </param>
internal sealed record Verification(string Scenario, int Accepted, int DeliveredRecords, int Lost, int Duplicated, int Late, int Unexpected,
    int BadSignature, bool Quiescent)
{
    /// <summary>
    /// Every accepted run delivered once, correctly signed, none of an earlier scenario's again, and the relay quiet; and
    /// at least one accepted: a phase whose every call failed (run m, docs/benchmarks.md) has nothing to lose and would
    /// otherwise pass.
    /// </summary>
    public bool Ok => Accepted > 0 && Lost == 0 && Duplicated == 0 && Late == 0 && BadSignature == 0 && Quiescent;

    /// <param name="earlier">Every run id accepted in the scenarios checked before this one.</param>
    public static Verification Check(string scenario, IReadOnlyCollection<string> accepted, IReadOnlyList<Delivered> records,
        IReadOnlySet<string>? earlier = null, bool quiescent = true)
    {
        var counts = new Dictionary<string, int>(StringComparer.Ordinal);
        var bad = 0;
        foreach (var record in records)
        {
            if (!record.SignatureValid || record.StatusCode is < 200 or >= 300)
            {
                bad++;
            }
            var key = record.RunId ?? "(none)";
            counts[key] = counts.GetValueOrDefault(key) + 1;
        }
        var acceptedSet = accepted.ToHashSet(StringComparer.Ordinal);
        var lost = acceptedSet.Count(id => !counts.ContainsKey(id));
        var duplicated = counts.Count(kv => kv.Value > 1 && acceptedSet.Contains(kv.Key));
        var late = counts.Where(kv => !acceptedSet.Contains(kv.Key) && earlier?.Contains(kv.Key) == true).Sum(kv => kv.Value);
        var unexpected = counts.Keys.Count(id => !acceptedSet.Contains(id) && earlier?.Contains(id) != true);
        return new Verification(scenario, acceptedSet.Count, records.Count, lost, duplicated, late, unexpected, bad, quiescent);
    }

    public override string ToString() =>
        $"{Scenario}: accepted {Accepted}, emulator records {DeliveredRecords}, lost {Lost}, duplicated {Duplicated}, late (earlier scenario's) {Late}, " +
        $"unexpected {Unexpected}, bad signature/status {BadSignature}{(Quiescent ? "" : ", relay NOT quiet")} => {(Ok ? "OK" : Accepted == 0 ? "FAIL (no run accepted)" : "FAIL")}";
}

/// <summary>The stand-in OTLP collector's counts (bench/PortAzure.BareKestrel/OtlpSink.cs), per service.name.</summary>
internal sealed class OtlpSinkClient(Uri baseUri) : IDisposable
{
    private static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web);
    private readonly HttpClient _http = new() { BaseAddress = baseUri };

    public async Task<Dictionary<string, Counts>> ReceivedAsync() =>
        await _http.GetFromJsonAsync<Dictionary<string, Counts>>(new Uri("v1/received", UriKind.Relative), Json) ?? [];

    /// <summary>
    /// The counts once nothing has arrived for longer than the SDK's export delay (5 s by default): the batch
    /// processors send a full batch (512) at once, but the tail waits for the timer.
    /// </summary>
    public async Task<Dictionary<string, Counts>> SettledAsync()
    {
        var last = await ReceivedAsync();
        var quietSince = Stopwatch.GetTimestamp();
        while (Stopwatch.GetElapsedTime(quietSince) < TimeSpan.FromSeconds(6))
        {
            await Task.Delay(500);
            var now = await ReceivedAsync();
            if (!now.OrderBy(kv => kv.Key).SequenceEqual(last.OrderBy(kv => kv.Key)))
            {
                (last, quietSince) = (now, Stopwatch.GetTimestamp());
            }
        }
        return last;
    }

    public void Dispose() => _http.Dispose();

    internal sealed record Counts(long Spans = 0, long LogRecords = 0, long Metrics = 0, long Requests = 0, long Bytes = 0)
    {
        public static Counts operator -(Counts a, Counts b) =>
            new(a.Spans - b.Spans, a.LogRecords - b.LogRecords, a.Metrics - b.Metrics, a.Requests - b.Requests, a.Bytes - b.Bytes);
    }
}
