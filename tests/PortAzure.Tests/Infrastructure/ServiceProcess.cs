using System.Collections.Concurrent;
using System.Diagnostics;

namespace PortAzure.Tests.Infrastructure;

/// <summary>
/// A relay service as a real OS process (its built dll, run as a deployment runs it: the bin folder's
/// appsettings.json plus environment variables), for tests about crashes and stand-alone runs.
/// </summary>
public sealed class ServiceProcess : IDisposable
{
    private const int KeptLines = 200;
    private readonly Process _process;
    private readonly ConcurrentQueue<string> _output = new();
    private int _errorLines;
    private readonly TaskCompletionSource<Uri> _listening = new(TaskCreationOptions.RunContinuationsAsynchronously);

    private ServiceProcess(Process process) => _process = process;

    /// <summary>The last lines the process wrote (stdout and stderr), for failure messages.</summary>
    public string Output => string.Join(Environment.NewLine, _output);

    /// <summary>Error lines (the console's <c>fail:</c>) the process wrote, all of them, not only those in <see cref="Output"/>.</summary>
    public int ErrorLines => Volatile.Read(ref _errorLines);

    /// <summary>
    /// Where Kestrel listens, from its "Now listening on:" line. The services bind port 0 and report the
    /// port: a port found free beforehand could be taken by a parallel test before the process binds it.
    /// </summary>
    public Task<Uri> ListeningAddress => _listening.Task;

    public static ServiceProcess StartDispatcher(IDictionary<string, string?> config) => Start("PortAzure.Dispatcher", config);

    /// <param name="workingDirectory">Where the process is started from; its bin folder if not given.</param>
    public static ServiceProcess StartIngress(IDictionary<string, string?> config, string? workingDirectory = null) =>
        Start("PortAzure.Ingress", config, workingDirectory);

    private static ServiceProcess Start(string project, IDictionary<string, string?> config, string? workingDirectory = null)
    {
        var configuration = AppContext.BaseDirectory.Contains($"{Path.DirectorySeparatorChar}Release{Path.DirectorySeparatorChar}", StringComparison.Ordinal) ? "Release" : "Debug";
        var dll = Path.Combine(Repository.Root, project, "bin", configuration, "net10.0", project + ".dll");
        if (!File.Exists(dll))
        {
            throw new FileNotFoundException($"Build {project} first.", dll);
        }
        var start = new ProcessStartInfo("dotnet")
        {
            WorkingDirectory = workingDirectory ?? Path.GetDirectoryName(dll)!,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        start.ArgumentList.Add(dll);
        start.Environment["ASPNETCORE_URLS"] = "http://127.0.0.1:0";
        start.Environment["ASPNETCORE_ENVIRONMENT"] = "Testing";
        foreach (var (key, value) in config)
        {
            start.Environment[key.Replace(":", "__", StringComparison.Ordinal)] = value;
        }
        var process = Process.Start(start) ?? throw new InvalidOperationException($"{project} did not start.");
        var service = new ServiceProcess(process);
        process.OutputDataReceived += (_, e) => service.Keep(e.Data);
        process.ErrorDataReceived += (_, e) => service.Keep(e.Data);
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return service;
    }

    private void Keep(string? line)
    {
        if (line is null)
        {
            _listening.TrySetException(new InvalidOperationException("The process ended its output without listening:\n" + Output));
            return;
        }
        const string Listening = "Now listening on: ";
        var at = line.IndexOf(Listening, StringComparison.Ordinal);
        if (at >= 0)
        {
            _listening.TrySetResult(new Uri(line[(at + Listening.Length)..].Trim()));
        }
        if (line.StartsWith("fail: ", StringComparison.Ordinal))
        {
            Interlocked.Increment(ref _errorLines);
        }
        _output.Enqueue(line);
        while (_output.Count > KeptLines && _output.TryDequeue(out _))
        {
        }
    }

    public bool HasExited => _process.HasExited;

    public int ExitCode => _process.ExitCode;

    /// <summary>Waits for the process to exit on its own, with all its output read.</summary>
    public bool WaitForExit(TimeSpan timeout)
    {
        if (!_process.WaitForExit(timeout))
        {
            return false;
        }
        // The timed wait returns before the redirected output is drained; the untimed one waits for it.
        _process.WaitForExit();
        return true;
    }

    /// <summary>
    /// Checks a process whose start was refused (its configuration): it exits with 1 after saying why, naming each of
    /// <paramref name="reasons"/>, and not with .NET's unhandled-exception abort (134), which printed it a second time.
    /// </summary>
    public void AssertRefusedAtStart(params string[] reasons)
    {
        Assert.True(WaitForExit(TimeSpan.FromSeconds(60)), "the process exits; its output:\n" + Output);
        Assert.True(ExitCode == 1, $"exit code {ExitCode}; its output:\n{Output}");
        Assert.All(reasons, reason => Assert.Contains(reason, Output, StringComparison.Ordinal));
        Assert.DoesNotContain("Unhandled exception", Output, StringComparison.Ordinal);
    }

    /// <summary>SIGTERM, as a container platform stops a replica; waits for the process to exit.</summary>
    public bool Terminate(TimeSpan timeout)
    {
        using (var kill = Process.Start("kill", ["-TERM", _process.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)]))
        {
            kill.WaitForExit();
        }
        return _process.WaitForExit(timeout);
    }

    /// <summary>SIGKILL: no shutdown hook runs, in-flight POSTs are cut.</summary>
    public void Kill()
    {
        if (!_process.HasExited)
        {
            _process.Kill(entireProcessTree: true);
            _process.WaitForExit();
        }
    }

    public void Dispose()
    {
        Kill();
        _process.Dispose();
    }
}
