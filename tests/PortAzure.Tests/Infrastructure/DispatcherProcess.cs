using System.Diagnostics;

namespace PortAzure.Tests.Infrastructure;

/// <summary>The Dispatcher as a real OS process (the built PortAzure.Dispatcher.dll), for tests about crashes.</summary>
public sealed class DispatcherProcess : IDisposable
{
    private readonly Process _process;

    private DispatcherProcess(Process process) => _process = process;

    public static DispatcherProcess Start(IDictionary<string, string?> config)
    {
        var configuration = AppContext.BaseDirectory.Contains($"{Path.DirectorySeparatorChar}Release{Path.DirectorySeparatorChar}", StringComparison.Ordinal) ? "Release" : "Debug";
        var dll = Path.Combine(Repository.Root, "PortAzure.Dispatcher", "bin", configuration, "net10.0", "PortAzure.Dispatcher.dll");
        if (!File.Exists(dll))
        {
            throw new FileNotFoundException("Build the Dispatcher first.", dll);
        }
        var start = new ProcessStartInfo("dotnet")
        {
            WorkingDirectory = Path.GetDirectoryName(dll)!,
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
        var process = Process.Start(start) ?? throw new InvalidOperationException("The Dispatcher did not start.");
        process.OutputDataReceived += (_, _) => { };
        process.ErrorDataReceived += (_, _) => { };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return new DispatcherProcess(process);
    }

    public bool HasExited => _process.HasExited;

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
