using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Configuration;

namespace Microsoft.Extensions.Hosting;

/// <summary>How the relay's services (and the emulator) build their host.</summary>
public static class RelayHost
{
    /// <summary>
    /// The options for <see cref="WebApplication.CreateBuilder(WebApplicationOptions)"/>: the content root is the app's own
    /// folder, where its appsettings.json is, wherever the process was started from (from another directory the Ingress
    /// found no appsettings.json, so no operator API routes, and answered /api/* 404). One given explicitly
    /// (<c>--contentRoot</c>, <c>ASPNETCORE_CONTENTROOT</c>, <c>DOTNET_CONTENTROOT</c>) is left to the host, which reads it.
    /// </summary>
    public static WebApplicationOptions Options(string[] args)
    {
        ArgumentNullException.ThrowIfNull(args);
        var given = new ConfigurationBuilder()
            .AddEnvironmentVariables("DOTNET_")
            .AddEnvironmentVariables("ASPNETCORE_")
            .AddCommandLine(args)
            .Build()[HostDefaults.ContentRootKey];
        return new WebApplicationOptions { Args = args, ContentRootPath = string.IsNullOrEmpty(given) ? AppContext.BaseDirectory : null };
    }

    /// <summary>
    /// Runs the app until it is stopped and returns the process's exit code: 0 after a stop, 1 if it could not start (an
    /// option refused by its validation, a port in use). The host has logged why by then ("Hosting failed to start", with
    /// every validation failure); letting the exception escape, as <c>app.Run()</c> does, printed it a second time and
    /// aborted the process (SIGABRT, exit 134, a core dump where they are enabled), which reads as a crash of the relay
    /// rather than a configuration it refused.
    /// </summary>
    public static int RunUntilStopped(this WebApplication app)
    {
        ArgumentNullException.ThrowIfNull(app);
        try
        {
            app.StartAsync().GetAwaiter().GetResult();
        }
#pragma warning disable CA1031 // Any failure to start ends the process with 1; the host has logged the exception itself.
        catch (Exception)
#pragma warning restore CA1031
        {
            // Disposing flushes the console logger's queue, which holds the host's line saying why.
            app.DisposeAsync().AsTask().GetAwaiter().GetResult();
            return 1;
        }
        app.WaitForShutdown();
        app.DisposeAsync().AsTask().GetAwaiter().GetResult();
        return 0;
    }
}
