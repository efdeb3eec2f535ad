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
}
